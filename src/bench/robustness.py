"""`make bench-robustness`: the API as it runs in production (`python -m src.serving --workers N`, over HTTP) under
generated, hostile and reloading load; exit 1 on any server error, dropped connection or lost request.

Three phases on one server, over a private copy of the champion's registry (new versions are made there, never in
the configured store; with no champion, one is trained with the smoke profile first, as `make bench-serve` does):

1. schemathesis generates valid and invalid requests from /openapi.json for every operation and runs all its checks;
2. a hand-written hostile set (NaN/Infinity in bodies, 10 MB bodies with and without Content-Length, wrong content
   types, 100k-deep JSON, 1e6-character strings, unknown fields, empty and non-UTF-8 bodies, a batch of invalid
   records), while a separate thread times GET /health;
3. single-record requests at concurrency 8 while the champion alias moves to a new version and /model/reload is sent,
   several times: every request must succeed; the versions seen and how long old versions were still served.

One module of ~430 lines on purpose: the three phases share one server, one store copy and one report, and each
phase is a function of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from nbs_lib.config import get_settings, load_spec
from src.bench.serve import HOST, Server, ensure_champion, free_port

KEY = "bench-robustness-api-key"
QUIET_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


# ---------------------------------------------------------------- the server -------------------------------------

def private_store(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """The env with MLFLOW_TRACKING_URI on a copy of its SQLite registry (the artifacts stay where they are)."""
    uri = env["MLFLOW_TRACKING_URI"]
    if not uri.startswith("sqlite:///"):
        sys.exit(f"error: the reload phase makes new model versions, so it needs a SQLite registry it can copy; "
                 f"MLFLOW_TRACKING_URI is {uri}. Unset it (a smoke champion is then trained) or point it at a sqlite:/// file.")
    shutil.copy(uri.removeprefix("sqlite:///"), tmp / "mlflow.db")
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}


def api_server(env: dict[str, str], tmp: Path, workers: int) -> Server:
    port = free_port()
    server_env = {**os.environ, **QUIET_MLFLOW, **env, "API_KEY": KEY, "PREDICTION_LOG": str(tmp / "predictions.db"),
                  "PROMETHEUS_MULTIPROC_DIR": str(tmp / "shared"), "MODEL_POLL_SECONDS": "0",
                  "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}   # as `make serve` runs it
    cmd = [sys.executable, "-m", "src.serving", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    return Server(f"python -m src.serving --workers {workers}", cmd, server_env, port, "/ready", tmp / "api.log")


def wait_all_ready(url: str, timeout: float = 180) -> None:
    """Until 30 /ready in a row answer 200: each lands on some worker, so every worker has loaded the champion."""
    deadline, in_a_row = time.monotonic() + timeout, 0
    while in_a_row < 30:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers were not all ready after {timeout:.0f} s")
        try:
            in_a_row = in_a_row + 1 if httpx.get(f"{url}/ready", timeout=5).status_code == 200 else 0
        except httpx.TransportError:
            in_a_row = 0
        time.sleep(0.02 if in_a_row else 0.5)


# ---------------------------------------------------------------- 1. schemathesis --------------------------------

@dataclass
class Fuzz:
    cases: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)      # by status class, "2xx"...
    failures: collections.Counter = field(default_factory=collections.Counter)      # by check name
    examples: list[str] = field(default_factory=list)                               # the first failing cases


def fuzz(url: str, examples: int) -> Fuzz:
    """`examples` generated cases per operation and mode (positive; negative where the operation takes input), every
    schemathesis check on each answer."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()
    checks = list(CHECKS.get_all())
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    result, session = Fuzz(), requests.Session()

    def run(operation, mode: GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            result.cases += 1
            try:
                response = case.call(base_url=url, session=session, timeout=60)
            except requests.RequestException as e:   # a dropped connection: counted, and the run goes on
                result.statuses["no answer"] += 1
                result.examples.append(f"{operation.label} ({mode.value}): no answer, {type(e).__name__} {e}")
                return
            result.statuses[f"{response.status_code // 100}xx"] += 1
            try:
                case.validate_response(response, checks=checks)
            except Exception as e:  # noqa: BLE001 - a FailureGroup, or a check that could not run: tally both
                for failure in getattr(e, "exceptions", [e]):
                    result.failures[getattr(failure, "title", type(failure).__name__)] += 1
                if len(result.examples) < 5:
                    result.examples.append(f"{operation.label} ({mode.value}): {str(e).strip()[:300]}")

        check()

    # Invalid requests exist only for operations with a constrained body (the prediction bodies, /monitoring/run)
    for operation in [r.ok() for r in schema.get_all_operations()]:
        for mode in [GenerationMode.POSITIVE, *([GenerationMode.NEGATIVE] if operation.body else [])]:
            run(operation, mode)
    return result


# ---------------------------------------------------------------- 2. the hostile set -----------------------------

def hostile_requests(record: dict, mb: int, depth: int, chars: int, invalid: int) -> list[tuple[str, str, str, dict, object]]:
    """(name, method, path, headers, body) of each hostile request; a body that is a function is sent chunked."""
    j = {"Content-Type": "application/json"}
    one = json.dumps(record)
    key, num = next(iter(record)), next(k for k, v in record.items() if isinstance(v, float))
    big = mb * 1_000_000
    junk = b"x" * big
    many = ("{\"records\": [" + ",".join([one] * (big // len(one))) + "]}").encode()
    deep = b"[" * depth
    text = "a" * chars

    def chunked(data: bytes) -> object:
        def gen() -> Iterator[bytes]:
            for i in range(0, len(data), 65_536):
                yield data[i:i + 65_536]
        return gen

    out = []
    for lit in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        body = one.replace(json.dumps(record[num]), lit, 1)
        out += [(f"{num}={lit}", "POST", "/predict", j, body), (f"{num}={lit} in a batch", "POST", "/predict/batch", j,
                                                                '{"records": [' + body + "]}")]
    for path in ("/predict", "/predict/batch", "/model/reload", "/monitoring/run"):
        out += [(f"{mb} MB junk, Content-Length", "POST", path, {**j, "X-API-Key": KEY}, junk),
                (f"{mb} MB junk, chunked", "POST", path, {**j, "X-API-Key": KEY}, chunked(junk))]
    out += [(f"{mb} MB of valid records ({len(many) // len(one):,})", "POST", "/predict/batch", j, many),
            (f"{mb} MB of valid records, chunked", "POST", "/predict/batch", j, chunked(many)),
            (f"GET with a {mb} MB body", "GET", "/health", j, junk)]
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
                  "application/json-patch+json", None):
        headers = {"Content-Type": ctype} if ctype else {}
        out += [(f"Content-Type {ctype}", "POST", path, headers, one if path == "/predict" else '{"records": [' + one + "]}")
                for path in ("/predict", "/predict/batch")]
    out += [(f"{depth:,} levels of [", "POST", path, j, deep) for path in ("/predict", "/predict/batch")]
    out += [(f"{depth:,} levels of [ under records", "POST", "/predict/batch", j, b'{"records": ' + deep),
            ("60,000 levels of [ (under the /predict cap)", "POST", "/predict", j, b"[" * 60_000),
            (f"{depth:,} levels of {{\"a\":", "POST", "/predict/batch", j, b'{"a":' * depth)]
    out += [(f"{chars:,}-character {key}", "POST", path, j, json.dumps({**record, key: text}) if path == "/predict"
             else json.dumps({"records": [{**record, key: text}]})) for path in ("/predict", "/predict/batch")]
    out += [(f"{chars:,}-character field name", "POST", "/predict/batch", j, json.dumps({"records": [{**record, text: 1}]})),
            ("unknown field", "POST", "/predict", j, json.dumps({**record, "extra": 1})),
            ("unknown field in a batch record", "POST", "/predict/batch", j, json.dumps({"records": [{**record, "extra": 1}]})),
            ("unknown top-level field in a batch", "POST", "/predict/batch", j, json.dumps({"records": [record], "x": 1}))]
    out += [(f"empty body{' (no Content-Type)' if not h else ''}", "POST", p, h, b"")
            for p in ("/predict", "/predict/batch", "/model/reload") for h in (j, {})]
    surrogate = one.replace(json.dumps(record[key]), '"\\ud800"', 1)   # valid JSON, not encodable as UTF-8
    bad_utf8 = one.encode().replace(json.dumps(record[key]).encode(), b'"\xff\xfe\xc3("', 1)
    out += [("invalid UTF-8", "POST", "/predict", j, bad_utf8),
            ("invalid UTF-8 in a batch", "POST", "/predict/batch", j, b'{"records": [' + bad_utf8 + b"]}"),
            ("lone surrogate \\ud800", "POST", "/predict", j, surrogate),
            ("lone surrogate \\ud800 in a batch", "POST", "/predict/batch", j, '{"records": [' + surrogate + "]}")]
    for body in ("null", "[]", '"x"', "1e999", "{}", '{"records": null}', '{"records": {}}', "{" * 3, one + one):
        out += [(f"body {body[:20]}", "POST", path, j, body) for path in ("/predict", "/predict/batch")]
    wrong = {k: ([] if isinstance(v, str) else "x") for k, v in record.items()}
    out += [(f"{invalid:,} invalid records", "POST", "/predict/batch", j, json.dumps({"records": [wrong] * invalid})),
            ("10,001 valid records (over BATCH_LIMIT)", "POST", "/predict/batch", j, json.dumps({"records": [record] * 10_001})),
            ("wrong X-API-Key", "POST", "/model/reload", {"X-API-Key": "x" * 10_000}, b""),
            ("16 kB header", "GET", "/health", {"X-Junk": "x" * 16_000}, None),
            ("path traversal", "GET", "/monitoring/reports/..%2F..%2Fetc/passwd", {}, None)]
    return out


@dataclass
class Hostile:
    statuses: collections.Counter = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")
    health: list[float] = field(default_factory=list)     # s
    health_failures: int = 0


def hostile(url: str, requests_: list, rounds: int) -> Hostile:
    """Each hostile request `rounds` times on a fresh connection, while a thread times GET /health (its own client)."""
    result, done = Hostile(), threading.Event()

    def watch_health() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/health").status_code == 200
                except httpx.TransportError:
                    ok = False
                if ok:
                    result.health.append(time.perf_counter() - started)
                else:
                    result.health_failures += 1
                time.sleep(0.005)

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    try:
        for _ in range(rounds):
            for name, method, path, headers, body in requests_:
                label = f"{method} {path}: {name}"
                kw = {"content": body() if callable(body) else body} if body is not None else {}
                started = time.perf_counter()
                try:
                    with httpx.Client(base_url=url, timeout=120) as client:
                        status = client.request(method, path, headers=headers, **kw).status_code
                except httpx.TransportError as e:
                    result.resets.append(f"{label}: {type(e).__name__} {e}")
                    result.statuses["no answer"] += 1
                    continue
                took = time.perf_counter() - started
                result.slowest = max(result.slowest, (took, label))
                result.statuses[f"{status // 100}xx"] += 1
                if status >= 500:
                    result.server_errors.append(f"{label}: {status}")
    finally:
        done.set()
        watcher.join()
    return result


# ---------------------------------------------------------------- 3. load across reloads -------------------------

@dataclass
class Reloads:
    elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)
    versions: collections.Counter = field(default_factory=collections.Counter)
    reloads: list[tuple[int, str, float]] = field(default_factory=list)   # (status, version asked, seconds into the run)
    lags: list[float] = field(default_factory=list)      # per reload: how long after it an older version still answered
    settled: float = float("nan")     # s from the last reload's answer until every worker serves its version


async def load_with_reloads(url: str, env: dict[str, str], model: str, records: list[dict], total: int,
                            concurrency: int, reloads: int) -> Reloads:
    import mlflow

    registry = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    result, answered = Reloads(), []      # answered: (sent at, version) of each request
    gate = asyncio.Semaphore(concurrency)

    def new_version() -> str:   # the same model as a new version, as a retraining that passes the gate would make
        old = registry.get_model_version_by_alias(model, "champion")
        source = registry.get_model_version_download_uri(model, old.version)
        return str(registry.create_model_version(model, source=source, run_id=old.run_id).version)

    versions = [new_version() for _ in range(reloads)]   # made before the load: only the alias moves during it
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency + 1)) as client:
        async def one(i: int) -> None:
            async with gate:
                at = time.perf_counter() - t0
                try:
                    r = await client.post("/predict", json=records[i % len(records)])
                except httpx.TransportError as e:
                    result.errors.append(f"request {i}: {type(e).__name__} {e}")
                    return
                if r.status_code != 200:
                    result.errors.append(f"request {i}: {r.status_code} {r.text[:200]}")
                    return
                answered.append((at, int(r.json()["model_version"])))

        async def reloader() -> None:
            for k in range(1, reloads + 1):
                while len(answered) + len(result.errors) < total * k // (reloads + 1):
                    await asyncio.sleep(0.01)
                version = versions[k - 1]
                await asyncio.to_thread(registry.set_registered_model_alias, model, "champion", version)
                r = await client.post("/model/reload", headers={"X-API-Key": KEY})
                result.reloads.append((r.status_code, version, time.perf_counter() - t0))
                if r.status_code != 200 or r.json().get("model_version") != version:
                    result.errors.append(f"reload to v{version}: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(one(i) for i in range(total)), reloader())
        result.elapsed = time.perf_counter() - t0
        if versions:   # then until 30 answers in a row come from the last version: every worker has it
            in_a_row, deadline = 0, time.monotonic() + 60
            while in_a_row < 30 and time.monotonic() < deadline:
                served = (await client.get("/model")).json().get("version")
                in_a_row = in_a_row + 1 if served == versions[-1] else 0
            result.settled = time.perf_counter() - t0 - result.reloads[-1][2] if in_a_row == 30 else float("nan")
    result.versions.update(v for _, v in answered)
    for _, version, at in result.reloads:
        older = [t - at for t, v in answered if t > at and v < int(version)]
        result.lags.append(max(older, default=0.0))
    return result


# ---------------------------------------------------------------- the report -------------------------------------

def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def report(workers: int, fz: Fuzz, ho: Hostile, n_hostile: int, rl: Reloads, args: argparse.Namespace) -> int:
    """Print the figures; the number of failed targets (0: all met)."""
    def classes(c: collections.Counter) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))

    print(f"\n## Robustness benchmark (python -m src.serving --workers {workers}; {os.cpu_count()} CPUs, "
          f"load average at the end {os.getloadavg()[0]:.1f})\n")
    print("| phase | figure |\n|---|---|")
    print(f"| schemathesis: cases ({args.examples} per operation and mode) | {fz.cases} |")
    print(f"| schemathesis: answers by status class | {classes(fz.statuses)} |")
    print(f"| schemathesis: check failures | {classes(fz.failures) or 'none'} |")
    print(f"| hostile: requests ({n_hostile} kinds x {args.rounds} rounds) | {sum(ho.statuses.values())} |")
    print(f"| hostile: answers by status class | {classes(ho.statuses)} |")
    print(f"| hostile: slowest answer | {ho.slowest[0] * 1e3:,.0f} ms ({ho.slowest[1]}) |")
    print(f"| /health during the hostile set: n, p50, p99, max | {len(ho.health)}, {pct(ho.health, 50):.1f} ms, "
          f"{pct(ho.health, 99):.1f} ms, {pct(ho.health, 100):.1f} ms ({ho.health_failures} failed) |")
    n_ok = sum(rl.versions.values())
    print(f"| reload load: requests at concurrency {args.concurrency}, answered 200 | {n_ok + len(rl.errors)}, {n_ok} |")
    print(f"| reload load: req/s | {(n_ok + len(rl.errors)) / rl.elapsed:,.0f} ({rl.elapsed:.1f} s) |")
    print(f"| reload load: reloads (status, version) | {', '.join(f'{s} v{v}' for s, v, _ in rl.reloads)} |")
    print(f"| reload load: answers by model version | {', '.join(f'v{v}: {n}' for v, n in sorted(rl.versions.items()))} |")
    print(f"| reload load: an older version still answered, after each reload | "
          f"{', '.join(f'{x:.2f} s' for x in rl.lags)} |")
    print(f"| reload load: every worker serves the last version, after the last reload | {rl.settled:.2f} s |")
    health_p99 = round(pct(ho.health, 99), 1)
    # (target, measured, met, enforced): the latency target is reported, not enforced (shared machines are noisy)
    targets = [("schemathesis: 0 server errors or dropped connections",
                n := fz.statuses.get("5xx", 0) + fz.statuses.get("no answer", 0), n == 0, True),
               ("hostile: 0 server errors", n := len(ho.server_errors), n == 0, True),
               ("hostile: 0 connection resets / no answer", n := len(ho.resets) + ho.health_failures, n == 0, True),
               ("/health p99 under 50 ms during the hostile set", f"{health_p99} ms", health_p99 < 50, False),
               (f"reload load: 0 errors across {args.reloads} reloads", n := len(rl.errors), n == 0, True),
               ("reload load: every worker on the last version within 60 s", f"{rl.settled:.2f} s",
                rl.settled == rl.settled, True)]   # NaN (never settled) is the only value unequal to itself
    print("\n## Targets\n\n| target | measured | met |\n|---|---:|:---:|")
    failed = 0
    for name, shown, met, enforced in targets:
        print(f"| {name} | {shown} | {'yes' if met else 'NO'} |")
        failed += enforced and not met
    for title, items in [("schemathesis failures (first ones)", fz.examples), ("hostile: server errors", ho.server_errors),
                         ("hostile: connection resets", ho.resets), ("reload load: errors (first ones)", rl.errors[:10])]:
        if items:
            print(f"\n{title}:\n" + "\n".join(f"- {x} (x{n})" for x, n in collections.Counter(items).items()))
    return failed


def server_errors_logged(log: Path) -> str:
    """The server log's error blocks (an ERROR line and its traceback), each cut to its last lines."""
    blocks: list[list[str]] = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("ERROR"):
            blocks.append([line])
        elif blocks and blocks[-1] is not None and not line.startswith("INFO"):
            blocks[-1].append(line)
        elif blocks and blocks[-1] is not None:
            blocks.append(None)
    kinds = collections.Counter("\n".join(b[:1] + b[-8:]) for b in blocks if b)
    return "\n\n".join(f"{block}\n(logged {n} times)" for block, n in kinds.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="API worker processes")
    parser.add_argument("--examples", type=int, default=100, help="schemathesis cases per operation and generation mode")
    parser.add_argument("--rounds", type=int, default=3, help="times the hostile set is sent")
    parser.add_argument("--mb", type=int, default=10, help="size of the large hostile bodies (MB)")
    parser.add_argument("--depth", type=int, default=100_000, help="nesting of the deep JSON bodies")
    parser.add_argument("--chars", type=int, default=1_000_000, help="length of the long strings")
    parser.add_argument("--invalid", type=int, default=10_000, help="records in the batch of invalid records")
    parser.add_argument("--requests", type=int, default=10_000, help="requests of the reload phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reloads", type=int, default=5)
    args = parser.parse_args(argv)

    from nbs_lib.data import generate_synthetic

    tmp = Path(tempfile.mkdtemp(prefix="bench-robustness-"))
    server = None
    try:
        settings = get_settings()
        spec = load_spec(settings.spec, settings.project_dir)
        env = private_store(ensure_champion({"SPEC": settings.spec}, spec, tmp), tmp)
        records = json.loads(generate_synthetic(spec, 1000, seed=7)[spec.feature_names].to_json(orient="records"))
        server = api_server(env, tmp, args.workers)
        url = f"http://{HOST}:{server.port}"
        print(f"bench-robustness: {spec.name}, {server.name} on {url}", flush=True)
        server.start()
        wait_all_ready(url)
        print(f"  1. schemathesis, {args.examples} cases per operation and mode, all checks", flush=True)
        fz = fuzz(url, args.examples)
        hostile_set = hostile_requests(records[0], args.mb, args.depth, args.chars, args.invalid)
        print(f"  2. {len(hostile_set)} hostile requests x {args.rounds}, /health timed alongside", flush=True)
        ho = hostile(url, hostile_set, args.rounds)
        if server.proc.poll() is not None:
            ho.server_errors.append(f"the server exited ({server.proc.returncode}) during the hostile set")
        wait_all_ready(url)
        print(f"  3. {args.requests:,} requests at concurrency {args.concurrency} across {args.reloads} reloads", flush=True)
        run = load_with_reloads(url, env, spec.model_name, records, args.requests, args.concurrency, args.reloads)
        rl = asyncio.run(run)
        if server.proc.poll() is not None:
            rl.errors.append(f"the server exited ({server.proc.returncode}) during the reload load")
        log_tail = server_errors_logged(tmp / "api.log")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    failed = report(args.workers, fz, ho, len(hostile_set), rl, args)
    if log_tail:
        print(f"\nserver log, errors:\n{log_tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
