"""`make bench-serve`: this API vs `mlflow models serve` vs in-process prediction, on the same champion, with the
same load generator, in one run.

Measures single-record latency (p50/p95) and throughput at concurrency 1 and 8, rows/s for 10,000-row batches,
error counts for 10,000 requests at concurrency 8, what the prediction log costs, and where the time of one
record goes. Every server listens on 127.0.0.1 only. With no champion in the configured store (MLFLOW_TRACKING_URI,
default models/mlflow.db) it first trains one with the smoke profile into a temporary folder.

About 450 lines on purpose: the three servers, the load generator and the report must run in one process and one
run for the ratios to mean anything (the machines are shared and noisy), and the pieces share the server handles.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nbs_lib.config import Spec, get_settings, load_spec

PROJECT_DIR = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


# ---------------------------------------------------------------- the champion -----------------------------------

def ensure_champion(env: dict[str, str], spec: Spec, workdir: Path) -> dict[str, str]:
    """The env of a store with a champion: the configured one if it has one, else a smoke run in `workdir`."""
    from nbs_lib.champion import NoChampion, find_champion

    settings = get_settings()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        mv = find_champion(settings.mlflow_tracking_uri, spec.model_name, settings.model_alias)
        print(f"champion: {spec.model_name} v{mv.version} in {settings.mlflow_tracking_uri}")
        return {**env, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    except NoChampion:
        pass
    root = workdir / "project"
    store = {"MODELS_DIR": str(root / "models"), "DATA_DIR": str(root / "data"), "REPORTS_DIR": str(root / "reports"),
             "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'models' / 'mlflow.db'}",
             "OPTUNA_STORAGE": f"sqlite:///{root / 'models' / 'optuna.db'}", "PROFILE": "smoke", "DATA": ""}
    print(f"no champion in {settings.mlflow_tracking_uri}: training one with the smoke profile in {root} (1-3 min)")
    proc = subprocess.run([sys.executable, "-m", "src.pipeline"], cwd=PROJECT_DIR, env={**os.environ, **env, **store},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: the smoke pipeline failed:\n{proc.stderr[-3000:]}")
    return {**env, **store}


# ---------------------------------------------------------------- servers ----------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process in its own process group (so its workers stop with it)."""
    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> Server:
        self.proc = subprocess.Popen(self.cmd, cwd=PROJECT_DIR, env=self.env, start_new_session=True,
                                     stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}{self.ready_path}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)   # the group this script started: the server and its workers
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def api_server(env: dict[str, str], tmp: Path, log_predictions: bool) -> Server:
    port = free_port()
    server_env = {**os.environ, **env, "LOG_PREDICTIONS": str(log_predictions).lower(),
                  "PREDICTION_LOG": str(tmp / f"predictions-{port}.db"), "API_KEY": ""}
    cmd = [sys.executable, "-m", "uvicorn", "src.serving.app:app", "--host", HOST, "--port", str(port), "--workers", "1"]
    name = f"this API (log {'on' if log_predictions else 'off'})"
    return Server(name, cmd, server_env, port, "/ready", tmp / f"api-{port}.log")


def mlflow_server(env: dict[str, str], tmp: Path, model_name: str) -> Server:
    port = free_port()
    server_env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{model_name}@champion", "--env-manager", "local",
           "-h", HOST, "-p", str(port), "-w", "1"]
    return Server("mlflow models serve", cmd, server_env, port, "/ping", tmp / f"mlflow-{port}.log")


# ---------------------------------------------------------------- load generator ---------------------------------

def http_request(port: int, path: str, body: bytes) -> bytes:
    """One keep-alive HTTP/1.1 POST, as bytes."""
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(data[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, body, headers.get(b"connection", b"").lower() != b"close"


@dataclass
class Load:
    """Latencies (s) of successful requests, error count and wall time of one load run."""
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    @property
    def n(self) -> int:
        return len(self.latencies) + self.errors

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")

    @property
    def rps(self) -> float:
        return self.n / self.elapsed if self.elapsed else float("nan")


async def _load(port: int, requests: list[bytes], total: int, concurrency: int, timeout: float) -> Load:
    result, counter = Load(), itertools.count()

    async def worker() -> None:
        reader = writer = None
        while (i := next(counter)) < total:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                started = time.perf_counter()
                writer.write(requests[i % len(requests)])
                async with asyncio.timeout(timeout):
                    status, _, keep = await read_response(reader)
                if status == 200:
                    result.latencies.append(time.perf_counter() - started)
                else:
                    result.errors += 1
                if not keep:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                result.errors += 1
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


def load(port: int, requests: list[bytes], total: int, concurrency: int, timeout: float = 60) -> Load:
    """Send `total` requests (cycling through `requests`) over `concurrency` keep-alive connections."""
    try:
        import uvloop
        return uvloop.run(_load(port, requests, total, concurrency, timeout))
    except ImportError:
        return asyncio.run(_load(port, requests, total, concurrency, timeout))


# ---------------------------------------------------------------- in process -------------------------------------

def timed(fn: Callable[[], object], n: int) -> Load:
    """`fn` called n times in this process, as a Load (latency per call)."""
    fn()
    res = Load()
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        res.latencies.append(time.perf_counter() - t)
    res.elapsed = time.perf_counter() - started
    return res


def per_call_us(fn: Callable[[], object], n: int = 300) -> float:
    return timed(fn, n).pct(50) * 1e3


# ---------------------------------------------------------------- the benchmark ----------------------------------

@dataclass
class Row:
    name: str
    c1: Load | None = None
    c8: Load | None = None
    batch_rows_s: float = float("nan")
    batch_errors: int = 0


def fmt(v: float, digits: int = 2) -> str:
    return "-" if v != v else f"{v:,.{digits}f}"


def table(rows: list[Row]) -> str:
    head = ("| server | c=1 p50 ms | c=1 p95 ms | c=1 req/s | c=8 p50 ms | c=8 p95 ms | c=8 req/s | "
            "errors (c=8) | batch 10k rows/s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        c1 = (fmt(r.c1.pct(50)), fmt(r.c1.pct(95)), fmt(r.c1.rps, 0)) if r.c1 else ("-",) * 3
        c8 = (fmt(r.c8.pct(50)), fmt(r.c8.pct(95)), fmt(r.c8.rps, 0), f"{r.c8.errors} / {r.c8.n}") if r.c8 else ("-",) * 4
        lines.append(f"| {r.name} | {' | '.join(c1)} | {' | '.join(c8)} | {fmt(r.batch_rows_s, 0)} |")
    return "\n".join(lines)


def bench_servers(servers: list[tuple[Server, list[bytes], list[bytes]]], args: argparse.Namespace,
                  batch_rows: int) -> list[Row]:
    """Every server started at once, then each phase run on one server after the other (noise hits all alike)."""
    rows = {s.name: Row(s.name) for s, _, _ in servers}
    try:
        for server, _, _ in servers:
            print(f"  starting {server.name}", flush=True)
            server.start()
        for server, single, batch in servers:
            load(server.port, single, args.warmup, 1)
            load(server.port, batch, 1, 1, timeout=300)
        for phase in ("c1", "c8", "batch"):
            for server, single, batch in servers:
                row = rows[server.name]
                if phase == "c1":
                    row.c1 = load(server.port, single, args.requests_c1, 1)
                elif phase == "c8":
                    row.c8 = load(server.port, single, args.requests_c8, 8)
                else:
                    b = load(server.port, batch, args.batches, 1, timeout=300)   # median: robust to a noisy neighbour
                    row.batch_rows_s, row.batch_errors = batch_rows / (b.pct(50) / 1e3), b.errors
                print(f"  {phase:5} {server.name}: " + (
                    f"p50 {row.c1.pct(50):.2f} ms, {row.c1.rps:,.0f} req/s" if phase == "c1" else
                    f"p50 {row.c8.pct(50):.2f} ms, {row.c8.rps:,.0f} req/s, {row.c8.errors} errors" if phase == "c8" else
                    f"{row.batch_rows_s:,.0f} rows/s ({', '.join(f'{x * 1e3:.0f}' for x in b.latencies)} ms)"), flush=True)
    finally:
        for server, _, _ in servers:
            server.stop()
    return list(rows.values())


def where_time_goes(env: dict[str, str], spec: Spec, records: list[dict]) -> tuple[list[Row], list[tuple[str, float]]]:
    """In-process rows (sklearn Pipeline and compiled predictor) and a per-stage breakdown of one record (µs)."""
    import pandas as pd

    from nbs_lib.champion import load_champion
    from nbs_lib.predictions import PredictionLog
    from nbs_lib.predictor import make_predictor
    from nbs_lib.serving import ServedModel, as_records, batch_decoder, request_model
    from src.serving.routes import Answer

    uri = env["MLFLOW_TRACKING_URI"]
    champ = load_champion(uri, spec.model_name, "champion", spec)
    pipe = champ.model
    served = ServedModel(champ.name, champ.version, champ.alias, champ.run_id, make_predictor(pipe, spec))
    print(f"  champion v{served.version}: {type(pipe.steps[-1][1]).__name__} "
          f"{ {k: v for k, v in pipe.steps[-1][1].get_params().items() if k in ('n_estimators', 'max_depth', 'num_leaves')} }, "
          f"{served.predictor.kind} predictor", flush=True)
    one = pd.DataFrame(records[:1])
    big = pd.DataFrame(records)
    fast = served.predictor
    floor = Row("in-process: registered Pipeline.predict (floor)", c1=timed(lambda: pipe.predict(one), 300))
    floor.batch_rows_s = len(big) / (timed(lambda: pipe.predict(big), 3).pct(50) / 1e3)
    compiled = Row(f"in-process: {fast.kind} predictor (this API's path)", c1=timed(lambda: fast.predict(records[:1]), 2000))
    compiled.batch_rows_s = len(records) / (timed(lambda: fast.predict(records), 3).pct(50) / 1e3)

    Record = request_model(spec)
    body = json.dumps(records[0]).encode()
    rec = Record.model_validate_json(body)
    recs = as_records([rec])
    X = fast.transform(recs) if hasattr(fast, "transform") else None
    answer = Answer(spec, fast.classes)
    pred = fast.predict(recs)
    stages = [("one record: request model, parse + validate JSON (µs)", per_call_us(lambda: Record.model_validate_json(body)))]
    if X is not None:
        stages += [("one record: compiled preprocessing: derived, impute, scale, one-hot (µs)",
                    per_call_us(lambda: fast.transform(recs))),
                   ("one record: estimator kernel (µs)", per_call_us(lambda: fast.kernel(X)))]
    stages += [("one record: response body + JSON (µs)", per_call_us(lambda: answer.one(pred, served)))]
    est = pipe.steps[-1][1]
    pre = pipe[:-1]
    Xp = pre.transform(one)
    stages += [("one record, sklearn: Pipeline.predict_proba on a one-row DataFrame (µs)",
                per_call_us(lambda: pipe.predict_proba(one), 100)),
               ("one record, sklearn: DataFrame from the record (µs)", per_call_us(lambda: pd.DataFrame([records[0]]), 300)),
               ("one record, sklearn: the steps before the estimator (µs)", per_call_us(lambda: pre.transform(one), 100)),
               (f"one record, sklearn: {type(est).__name__}.predict_proba, n_jobs={getattr(est, 'n_jobs', '-')} (µs)",
                per_call_us(lambda: est.predict_proba(Xp) if hasattr(est, "predict_proba") else est.predict(Xp), 100))]
    batch_body = json.dumps({"records": records}).encode()
    decode = batch_decoder(spec, len(records))
    bpred = fast.predict(records)
    stages += [(f"{len(records):,} records: decode + validate the body (ms)", timed(lambda: decode(batch_body), 3).pct(50)),
               (f"{len(records):,} records: predict (ms)", timed(lambda: fast.predict(records), 3).pct(50)),
               (f"{len(records):,} records: response body + JSON (ms)",
                timed(lambda: answer.many(bpred, served), 3).pct(50))]
    with tempfile.TemporaryDirectory() as tmp:
        plog = PredictionLog(Path(tmp) / "p.db")
        stages.append(("prediction log: append one record, on the request path (µs)",
                       per_call_us(lambda: plog.append(recs, pred.values, "m", "1"))))
        plog.flush(60)
        started = time.perf_counter()
        plog.append(records, bpred.values, "m", "1")
        stages.append((f"prediction log: append {len(records):,} records, on the request path (µs)",
                       (time.perf_counter() - started) * 1e6))
        plog.flush(60)
        stages.append((f"prediction log: writer thread puts {len(records):,} records on disk, off the request path, "
                       "incl. 200 ms settle (ms)", (time.perf_counter() - started) * 1e3))
        plog.close()
    return [floor, compiled], stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-c1", type=int, default=1000, help="single-record requests at concurrency 1")
    parser.add_argument("--requests-c8", type=int, default=10_000, help="single-record requests at concurrency 8")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=5, help="timed batch requests per server")
    parser.add_argument("--skip-mlflow", action="store_true", help="leave out mlflow models serve")
    args = parser.parse_args(argv)

    from nbs_lib.data import generate_synthetic

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        settings = get_settings()
        spec = load_spec(settings.spec, settings.project_dir)
        env = ensure_champion({"SPEC": settings.spec}, spec, tmp)
        frame = generate_synthetic(spec, args.batch_rows, seed=2024)[spec.feature_names]
        records = json.loads(frame.to_json(orient="records"))

        def bodies(kind: str, port: int) -> tuple[list[bytes], list[bytes]]:
            if kind == "api":
                single = [http_request(port, "/predict", json.dumps(r).encode()) for r in records[:1000]]
                batch = [http_request(port, "/predict/batch", json.dumps({"records": records}).encode())]
            else:
                single = [http_request(port, "/invocations", json.dumps({"dataframe_records": [r]}).encode())
                          for r in records[:1000]]
                split = {"columns": spec.feature_names, "data": [[r[c] for c in spec.feature_names] for r in records]}
                batch = [http_request(port, "/invocations", json.dumps({"dataframe_split": split}).encode())]
            return single, batch

        print(f"bench-serve: {spec.name}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), "
              f"{args.requests_c1} requests at c=1, {args.requests_c8} at c=8, {args.batches} x {args.batch_rows:,}-row "
              "batches per server", flush=True)
        servers = [api_server(env, tmp, True), api_server(env, tmp, False)]
        if not args.skip_mlflow:
            servers.append(mlflow_server(env, tmp, spec.model_name))
        rows = bench_servers([(s, *bodies("mlflow" if s.name.startswith("mlflow") else "api", s.port)) for s in servers],
                             args, len(records))
        print("  in-process measurements", flush=True)
        inproc, stages = where_time_goes(env, spec, records)
        rows += inproc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n## Serving benchmark ({spec.name}; single record = one JSON record; batch = {args.batch_rows:,} records; "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)\n")
    print(table(rows))
    api, api_off = rows[0], rows[1]
    mlf = next((r for r in rows if r.name == "mlflow models serve"), None)
    floor = next(r for r in rows if r.name.startswith("in-process: registered"))
    print("\n## Targets\n")
    print("| target | measured | met |\n|---|---:|:---:|")
    if mlf is not None:
        for c in ("c1", "c8"):
            ratio = getattr(api, c).rps / getattr(mlf, c).rps
            print(f"| single-record throughput >= 3x mlflow serve ({c.replace('c', 'c=')}) | {ratio:.1f}x | {'yes' if ratio >= 3 else 'NO'} |")
    print(f"| single-record p50 <= 2 ms (c=1) | {api.c1.pct(50):.2f} ms | {'yes' if api.c1.pct(50) <= 2 else 'NO'} |")
    share = api.batch_rows_s / floor.batch_rows_s
    print(f"| batch rows/s >= 50% of in-process Pipeline.predict | {share:.0%} | {'yes' if share >= 0.5 else 'NO'} |")
    errors = sum(r.c8.errors + r.batch_errors for r in (api, api_off) if r.c8)
    print(f"| 0 errors (this API, all runs) | {errors} | {'yes' if errors == 0 else 'NO'} |")
    print("\n## Prediction log cost (this API, log on vs off)\n")
    print("| | log on | log off | cost |\n|---|---:|---:|---:|")
    for label, on, off, unit in [("c=1 p50 (ms)", api.c1.pct(50), api_off.c1.pct(50), "ms"),
                                 ("c=8 req/s", api.c8.rps, api_off.c8.rps, "%"),
                                 ("batch rows/s", api.batch_rows_s, api_off.batch_rows_s, "%")]:
        cost = f"{on - off:+.3f} ms" if unit == "ms" else f"{(on - off) / off:+.1%}"
        print(f"| {label} | {fmt(on, 3 if unit == 'ms' else 0)} | {fmt(off, 3 if unit == 'ms' else 0)} | {cost} |")
    print("\n## Where the time goes (in process)\n")
    print("| stage | time |\n|---|---:|")
    for name, value in stages:
        print(f"| {name} | {value:,.1f} |")
    print(f"\nHTTP + FastAPI + uvicorn (this API c=1 p50 minus the in-process compiled predictor p50): "
          f"{api.c1.pct(50) - rows[-1].c1.pct(50):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
