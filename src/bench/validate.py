"""`make bench-validate`: time and peak memory to validate 1M generated rows against the data contract.

The rows are generated once and saved; a child process loads them and runs the GX suite, so its peak RSS is the
validation's own (plus the frame), not the generator's."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(path: str, spec_name: str, policy: str) -> None:
    import pandas as pd

    from nbs_lib.config import find_project_dir, load_spec
    from nbs_lib.validation import validate_frame

    spec = load_spec(spec_name, find_project_dir())
    df = pd.read_parquet(path)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    validate_frame(df.head(1000), spec, policy)  # warm-up: imports and GX context set-up are not per-row costs
    t = time.perf_counter()
    report = validate_frame(df, spec, policy)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": len(df), "seconds": seconds, "peak_rss_mb": peak, "rss_after_load_mb": rss_loaded,
                      "ok": report.ok, "failed": len(report.errors)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--spec", default="obesity")
    parser.add_argument("--policy", default="training")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.spec, args.policy)
        return 0

    from nbs_lib.config import find_project_dir, load_spec
    from nbs_lib.data import generate_synthetic

    spec = load_spec(args.spec, find_project_dir())
    path = Path(tempfile.mkdtemp()) / "rows.parquet"
    generate_synthetic(spec, rows=args.rows, seed=1).to_parquet(path, index=False)
    proc = subprocess.run([sys.executable, "-m", "src.bench.validate", "--child", str(path), "--spec", args.spec,
                           "--policy", args.policy], capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"bench-validate: {r['rows']:,} rows x {len(spec.features) + 1 + len(spec.id_columns)} columns, spec={args.spec}, policy={args.policy}")
    print(f"{'validation wall time':28s} {r['seconds']:8.2f} s   (target <= 15 s)")
    print(f"{'rows per second':28s} {r['rows'] / r['seconds']:8,.0f}")
    print(f"{'peak RSS':28s} {r['peak_rss_mb']:8.0f} MB  (frame loaded: {r['rss_after_load_mb']:.0f} MB)")
    print(f"{'result':28s} {'valid' if r['ok'] else str(r['failed']) + ' failed expectations'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
