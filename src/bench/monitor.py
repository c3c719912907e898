"""`make bench-monitor`: the drift check on a 1M-row current set (the sampled path `make monitor` takes) beside
plain Evidently on the full data at 100k rows, with and without injected drift, in one run.

Every measurement runs in its own process, so its peak RSS (from `wait4`) is its own. The sampled path is the
whole monitor: read the CSV, the Great Expectations contract on every row, the seeded stratified sample, scoring
the sample and the reference with a model, the three Evidently reports, HTML and summary.json. "Plain Evidently"
runs the same reports on every row, without the contract or sampling. `--full-1m` also runs plain Evidently on
all 1M rows, the verdict the sample must match. Targets for the sampled 1M path: <= 60 s and <= 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from nbs_lib.config import load_spec

REFERENCE_ROWS, CURRENT_ROWS, FULL_ROWS = 20_000, 1_000_000, 100_000
DRIFT = {"shift": {"Weight": 0.25, "Age": 0.25, "FAF": 0.25, "TUE": 0.25, "CH2O": 0.25},
         "mix": {"MTRANS": {"Automobile": 0.3, "Motorbike": 0.01, "Bike": 0.01, "Public_Transportation": 0.6, "Walking": 0.08}}}
TARGET_S, TARGET_MB = 60.0, 3 * 1024


def prepare(folder: Path, spec_name: str) -> dict[str, str]:
    """Write the reference (parquet), the current sets (CSV: 1M and its first 100k rows, with and without drift) and a model."""
    import joblib

    from nbs_lib.data import generate_synthetic
    from nbs_lib.drift import inject_drift
    from nbs_lib.processing import features_target
    from nbs_lib.tuning import default_config, make_model_pipeline

    spec = load_spec(spec_name)
    reference = generate_synthetic(spec, REFERENCE_ROWS, seed=1)
    reference.to_parquet(folder / "reference.parquet", index=False)
    X, y = features_target(reference, spec)
    joblib.dump(make_model_pipeline(default_config(spec), spec, seed=0).fit(X, y), folder / "model.joblib")
    current = generate_synthetic(spec, CURRENT_ROWS, seed=2)
    paths = {"reference": str(folder / "reference.parquet"), "model": str(folder / "model.joblib")}
    for scenario, frame in (("no drift", current), ("drift", inject_drift(current, spec, **DRIFT, seed=3))):
        key = scenario.replace(" ", "_")
        frame.to_csv(folder / f"{key}_1m.csv", index=False)
        frame.head(FULL_ROWS).to_csv(folder / f"{key}_100k.csv", index=False)
        paths[f"{key}_1m"], paths[f"{key}_100k"] = str(folder / f"{key}_1m.csv"), str(folder / f"{key}_100k.csv")
    return paths


def child(job: dict) -> dict:
    """One measurement, in this process: 'sampled' = the monitor path, 'plain' = Evidently on every row."""
    import joblib

    from nbs_lib.champion import prepare_frame, score_frame
    from nbs_lib.drift import (
        build_reports,
        column_roles,
        drift_results,
        get_drift_settings,
        run_monitor,
        run_reports,
    )
    from nbs_lib.monitor import read_frame
    from nbs_lib.publishing import publish

    spec = load_spec(job["spec"])
    cfg = get_drift_settings(sample_rows=job["sample_rows"])
    started = time.perf_counter()
    reference = pd.read_parquet(job["reference"])
    model = joblib.load(job["model"])
    current = read_frame(job["current"], spec)
    if job["path"] == "sampled":
        result = run_monitor(current, reference, spec, cfg, model=model)
        publish(result, Path(job["out"]))
        s = result.summary
        out = {"rows": s["current"]["rows"], "analysed": s["current"]["sample_size"], "dataset_drift": s["dataset_drift"],
               "share": s["drift_share"], "drifted": [c["column"] for c in s["drifted_columns"]]}
    else:
        cur, ref = score_frame(model, prepare_frame(current, spec), spec), score_frame(model, prepare_frame(reference, spec), spec)
        roles = column_roles(spec, cur.columns)
        cols = roles["numeric"] + roles["categorical"] + [roles["target"], roles["prediction"]]
        snapshots = run_reports(build_reports(spec, roles, cols, cfg, performance=True), cur, ref, spec)
        for name, snap in snapshots.items():
            snap.save_html(str(Path(job["out"]) / f"{name}.html"))
        d = drift_results(snapshots["data_drift"], spec, roles)
        out = {"rows": len(cur), "analysed": len(cur), "dataset_drift": d["dataset_drift"], "share": d["drift_share"],
               "drifted": [c["column"] for c in d["drifted_columns"]]}
    return out | {"work_s": time.perf_counter() - started}


def measure(job: dict, folder: Path) -> dict:
    """Run `child(job)` in a fresh process; its result plus process wall time and peak RSS."""
    job_file, out_file = folder / "job.json", folder / "result.json"
    Path(job["out"]).mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))
    out_file.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "src.bench.monitor", "--child", str(job_file), str(out_file)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0 or not out_file.exists():
        raise RuntimeError(f"measurement {job['label']} failed (exit {os.waitstatus_to_exitcode(status)})")
    return json.loads(out_file.read_text()) | {"process_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                                               "peak_mb": usage.ru_maxrss / 1024, **job}


def table(rows: list[dict]) -> str:
    """A markdown table of the measurements."""
    head = ["scenario", "path", "rows", "analysed", "work s", "process s", "process CPU s", "peak RSS MB", "drift", "share",
            "drifted columns"]
    body = [[r["scenario"], r["label"], f"{r['rows']:,}", f"{r['analysed']:,}", f"{r['work_s']:.1f}", f"{r['process_s']:.1f}",
             f"{r['cpu_s']:.1f}",
             f"{r['peak_mb']:,.0f}", "yes" if r["dataset_drift"] else "no", f"{r['share']:.2f}", ", ".join(r["drifted"]) or "-"]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: list) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="obesity")
    p.add_argument("--sample-rows", type=int, default=0, help="DRIFT_SAMPLE_ROWS for the sampled path (default: the setting)")
    p.add_argument("--full-1m", action="store_true", help="also run plain Evidently on all 1M rows (slow, memory-hungry)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        Path(args.child[1]).write_text(json.dumps(child(json.loads(Path(args.child[0]).read_text()))))
        return 0

    from nbs_lib.drift import get_drift_settings

    sample_rows = args.sample_rows or get_drift_settings().sample_rows
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        paths = prepare(folder, args.spec)
        print(f"generated a {REFERENCE_ROWS:,}-row reference and {CURRENT_ROWS:,}-row current sets in "
              f"{time.perf_counter() - t0:.0f} s (not timed below); sample size {sample_rows:,}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        rows = []
        for scenario in ("no drift", "drift"):
            key = scenario.replace(" ", "_")
            jobs = [("sampled", f"{key}_1m", "sampled path (make monitor), 1M rows"),
                    ("plain", f"{key}_100k", "plain Evidently, full 100k rows"),
                    ("sampled", f"{key}_100k", "sampled path, the same 100k rows")]
            if args.full_1m:
                jobs.append(("plain", f"{key}_1m", "plain Evidently, full 1M rows"))
            for path, data, label in jobs:
                job = {"spec": args.spec, "path": path, "current": paths[data], "reference": paths["reference"],
                       "model": paths["model"], "sample_rows": sample_rows, "out": str(folder / "out" / key / data / path),
                       "label": label, "scenario": scenario}
                rows.append(measure(job, folder))
                r = rows[-1]
                print(f"  {scenario}: {label}: {r['work_s']:.1f} s, {r['peak_mb']:,.0f} MB, drift={r['dataset_drift']}", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}. work s: from reading the files to the last report "
          "written; process s: the whole process (imports included); CPU s: user+system time of the process, which "
          "other work on the machine does not inflate.")
    print("\n" + table(rows))
    print()
    ok = True
    for scenario in ("no drift", "drift"):
        same = [r for r in rows if r["scenario"] == scenario]
        verdicts = {r["label"]: r["dataset_drift"] for r in same}
        agree = len(set(verdicts.values())) == 1
        right = all(v == (scenario == "drift") for v in verdicts.values())
        ok &= agree and right
        print(f"{scenario}: verdicts {'agree' if agree else 'DISAGREE'} ({', '.join(f'{k}: {v}' for k, v in verdicts.items())})")
    big = [r for r in rows if r["path"] == "sampled" and r["rows"] == CURRENT_ROWS]
    worst_s, worst_mb = max(r["work_s"] for r in big), max(r["peak_mb"] for r in big)
    within = worst_s <= TARGET_S and worst_mb <= TARGET_MB
    print(f"sampled 1M path: worst {worst_s:.1f} s and {worst_mb:,.0f} MB peak RSS "
          f"(target <= {TARGET_S:.0f} s and <= {TARGET_MB:,} MB: {'met' if within else 'MISSED'})")
    return 0 if ok and within else 1


if __name__ == "__main__":
    sys.exit(main())
