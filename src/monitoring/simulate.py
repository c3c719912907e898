"""`make simulate [DATA=csv RATE=20 ROWS=500 BATCH=1 SHIFT=col=k MIX=col=level:p,... API_URL=...]`: replay traffic.

Sends rows of a CSV (default: data generated from the spec) to the running API at a fixed rate, optionally with
drift injected (SHIFT moves numeric columns by k standard deviations, MIX redraws a categorical column's levels),
so the prediction log fills as in production. Bounded: at most 100,000 rows and 2,000 rows/s, and only to a local
API (127.0.0.1 / localhost). Exit status: 0 every request answered 2xx, 1 some did not, 2 bad arguments or no API.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pandas as pd

from nbs_lib.config import Spec, UserInputError, get_settings, load_spec
from nbs_lib.data import generate_synthetic, read_table
from nbs_lib.drift import inject_drift

log = logging.getLogger(__name__)

MAX_ROWS = 100_000
MAX_RATE = 2_000.0            # rows per second
MAX_BATCH = 1_000
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
GIVE_UP_AFTER = 5             # consecutive connection failures before the run stops


def check_url(url: str) -> str:
    """The API's base URL, only when it is a local http(s) address."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserInputError(f"API_URL={url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000.")
    if parts.hostname not in LOCAL_HOSTS:
        raise UserInputError(f"API_URL={url!r}: the simulator only sends traffic to a local API (127.0.0.1 or "
                             f"localhost), not to {parts.hostname!r}.")
    return f"{parts.scheme}://{parts.netloc}"


def parse_shift(text: str) -> dict[str, float]:
    """'Weight=1.5,Age=-0.5' -> {'Weight': 1.5, 'Age': -0.5} (standard deviations)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        col, _, k = item.partition("=")
        try:
            out[col.strip()] = float(k)
        except ValueError:
            raise UserInputError(f"SHIFT item {item!r} is not column=number (standard deviations), e.g. SHIFT=Weight=1.5") from None
        if not math.isfinite(out[col.strip()]):
            raise UserInputError(f"SHIFT item {item!r}: the shift must be a finite number.")
    return out


def parse_mix(text: str) -> dict[str, dict[str, float]]:
    """'MTRANS=Automobile:0.7,Walking:0.3;CALC=no:1' -> {'MTRANS': {'Automobile': 0.7, 'Walking': 0.3}, 'CALC': {'no': 1.0}}."""
    out: dict[str, dict[str, float]] = {}
    for part in filter(None, (t.strip() for t in text.split(";"))):
        col, _, levels = part.partition("=")
        try:
            out[col.strip()] = {lvl.strip(): float(p) for lvl, _, p in (x.partition(":") for x in levels.split(","))}
        except ValueError:
            raise UserInputError(f"MIX {part!r} is not column=level:weight,level:weight, "
                                 "e.g. MIX=MTRANS=Automobile:0.7,Walking:0.3 (several columns separated by ';')") from None
    return out


def records(frame: pd.DataFrame, spec: Spec) -> list[dict]:
    """The rows as API requests: the spec's features only, missing values as null."""
    missing = [c for c in spec.feature_names if c not in frame.columns]
    if missing:
        raise UserInputError(f"The data to replay has no column(s) {', '.join(map(repr, missing))} of the {spec.name!r} spec.")
    feats = frame[spec.feature_names].astype(object)
    return feats.where(feats.notna(), None).to_dict(orient="records")


def load_rows(data: str, spec: Spec, rows: int, seed: int) -> pd.DataFrame:
    """`rows` rows of the CSV (repeated from the start when it is shorter), or generated from the spec."""
    if not data:
        return generate_synthetic(spec, rows=rows, seed=seed)
    frame = read_table(data, spec)
    if frame.empty:
        raise UserInputError(f"{data} has no rows to replay.")
    repeats = -(-rows // len(frame))
    return pd.concat([frame] * repeats, ignore_index=True).head(rows)


@dataclass
class Replay:
    """What a simulation did."""
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    connection_errors: int = 0
    first_problem: str = ""
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.connection_errors == 0 and all(200 <= s < 300 for s in self.statuses)

    def describe(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s else 0.0
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items())) or "none"
        text = (f"sent {self.sent} rows in {self.elapsed_s:.1f} s ({rate:.1f} rows/s); requests by response status: {codes}; "
                f"connection errors: {self.connection_errors}")
        return text + (f"\nfirst problem: {self.first_problem}" if self.first_problem else "")


def replay(client: httpx.Client, rows: list[dict], rate: float, batch: int = 1,
           clock=time.monotonic, sleep=time.sleep) -> Replay:
    """POST the rows in order, `batch` at a time, paced at `rate` rows per second."""
    out, started, failures = Replay(), clock(), 0
    for i in range(0, len(rows), batch):
        wait = started + i / rate - clock()
        if wait > 0:
            sleep(wait)
        chunk = rows[i:i + batch]
        try:
            r = (client.post("/predict", json=chunk[0]) if batch == 1 else
                 client.post("/predict/batch", json={"records": chunk}))
        except httpx.TransportError as e:
            out.connection_errors += 1
            failures += 1
            out.first_problem = out.first_problem or f"{type(e).__name__}: {e}"
            if failures >= GIVE_UP_AFTER:
                out.first_problem += f" (stopped after {failures} failed connections in a row)"
                break
            continue
        failures = 0
        out.sent += len(chunk)
        out.statuses[r.status_code] += 1
        if r.status_code >= 300 and not out.first_problem:
            out.first_problem = f"HTTP {r.status_code}: {r.text[:300]}"
    out.elapsed_s = clock() - started
    return out


def check_api(client: httpx.Client, url: str) -> None:
    """Fail with what to do when no API answers or it serves no model."""
    try:
        r = client.get("/ready")
    except httpx.TransportError as e:
        raise UserInputError(f"No API answers at {url} ({type(e).__name__}). Start it with `make serve`, "
                             "or pass API_URL=http://127.0.0.1:<port>.") from e
    if r.status_code != 200:
        detail = r.json().get("detail", r.text) if "json" in r.headers.get("content-type", "") else r.text[:200]
        raise UserInputError(f"The API at {url} is not ready (HTTP {r.status_code}: {detail}).")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", help="CSV to replay (default: rows generated from the spec)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the local API")
    p.add_argument("--rate", type=float, default=20.0, help=f"rows per second (at most {MAX_RATE:.0f})")
    p.add_argument("--rows", type=int, default=500, help=f"rows to send (at most {MAX_ROWS})")
    p.add_argument("--batch", type=int, default=1, help="rows per request: 1 uses /predict, more /predict/batch")
    p.add_argument("--shift", default="", help="numeric drift, column=std devs[,...], e.g. Weight=1.5")
    p.add_argument("--mix", default="", help="category mix, column=level:weight[,...][;column=...]")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--spec", default="", help="dataset spec (default: SPEC or specs/obesity.yaml)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    return p


def check_bounds(args: argparse.Namespace) -> None:
    if not 1 <= args.rows <= MAX_ROWS:
        raise UserInputError(f"ROWS={args.rows}: send between 1 and {MAX_ROWS} rows.")
    if not (0 < args.rate <= MAX_RATE):
        raise UserInputError(f"RATE={args.rate}: use a rate above 0 and at most {MAX_RATE:.0f} rows/s.")
    if not 1 <= args.batch <= MAX_BATCH:
        raise UserInputError(f"BATCH={args.batch}: use 1 to {MAX_BATCH} rows per request.")


def main(argv: list[str] | None = None, client: httpx.Client | None = None) -> int:
    """Run a simulation; `client` (e.g. a TestClient) replaces the HTTP connection in tests."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args = parser().parse_args(argv)
    try:
        check_bounds(args)
        url = check_url(args.url)
        settings = get_settings(spec=args.spec)
        spec = load_spec(settings.spec, settings.project_dir)
        frame = inject_drift(load_rows(args.data, spec, args.rows, args.seed), spec, parse_shift(args.shift),
                             parse_mix(args.mix), args.seed)
        rows = records(frame, spec)
        own = client is None
        client = client or httpx.Client(base_url=url, timeout=args.timeout)
        try:
            check_api(client, url)
            print(f"sending {len(rows)} rows to {url} at {args.rate:g} rows/s in batches of {args.batch}"
                  + (f", shift {args.shift}" if args.shift else "") + (f", mix {args.mix}" if args.mix else ""), flush=True)
            result = replay(client, rows, args.rate, args.batch)
        finally:
            if own:
                client.close()
    except UserInputError as e:
        print(f"\nerror: {e}\n", file=sys.stderr)
        return 2
    print(result.describe())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
