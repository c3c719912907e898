"""`make monitor [CURRENT=path REFERENCE=path SINCE= UNTIL= SPEC=]`: drift of current data against the champion's reference.

CURRENT is a CSV/parquet, a prediction-log .db, or empty for the API's prediction log (PREDICTION_LOG) over the last
DRIFT_WINDOW_HOURS. REFERENCE defaults to the champion's training snapshot. HTML reports and summary.json go to
reports/monitoring/<timestamp>/ and reports/monitoring/latest points at them.

Exit status: 0 no dataset drift, 1 drift crossed DRIFT_SHARE_THRESHOLD, 2 the input or settings are wrong (nothing written),
130/143 stopped by Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from nbs_lib.config import UserInputError, check_mlflow_store, get_settings, load_spec
from nbs_lib.drift import MonitorResult, get_drift_settings
from nbs_lib.monitor import monitor_sources
from src.signals import sigterm_as_interrupt

NO_DRIFT, DRIFT, USER_ERROR = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--current", default="", help="CSV/parquet, prediction-log .db, or empty: PREDICTION_LOG")
    p.add_argument("--reference", default="", help="CSV/parquet reference; empty: the champion's reference/train.parquet")
    p.add_argument("--since", default="", help="prediction-log window start, ISO time (default: DRIFT_WINDOW_HOURS ago)")
    p.add_argument("--until", default="", help="prediction-log window end, ISO time (default: now)")
    p.add_argument("--spec", default="", help="dataset spec (default: SPEC or specs/obesity.yaml)")
    return p


def describe(result: MonitorResult, folder: str) -> str:
    """The lines a person reads at the end of `make monitor`."""
    s = result.summary
    verdict = "DRIFT" if s["dataset_drift"] else "no dataset drift"
    cur = s["current"]
    rows = f"{cur['rows']} rows" + (f", sampled to {cur['sample_size']} (seed {cur['seed']}, stratified on "
                                    f"{cur['stratified_on'] or 'nothing'})" if cur["sampled"] else "")
    lines = [f"{verdict}: {s['drifted_count']} of {s['columns_checked']} columns drifted "
             f"(share {s['drift_share']:.2f}, threshold {s['threshold']:.2f})"]
    lines += [f"  {c['column']:<32} {c['test']:<26} score {c['score']:.4g} (threshold {c['threshold']})"
              for c in s["drifted_columns"]]
    for key in ("target_drift", "prediction_drift"):
        if s.get(key):
            d = s[key]
            lines.append(f"{key.replace('_', ' ')}: {'yes' if d['drifted'] else 'no'} ({d['test']} {d['score']:.4g})")
    if s.get("performance"):
        lines.append("performance: " + ", ".join(f"{k}={v:.4f}" for k, v in s["performance"].items() if isinstance(v, float)))
    lines.append(f"current: {cur.get('source')} ({rows})")
    lines.append(f"reference: {s['reference'].get('source')} ({s['reference']['rows']} rows)")
    quality = s["data_quality"]
    if quality["findings"] or quality["skipped_columns"]:
        lines.append(f"data contract: {len(quality['findings'])} finding(s)")
        lines += [f"  - {f['message']}" for f in quality["findings"]]
        lines += [f"  - drift not computed for {c!r}: {why}" for c, why in quality["skipped_columns"].items()]
    lines += [f"note: {n}" for n in s["notes"]]
    lines.append(f"reports: {folder} (summary.json, {', '.join(s['reports'].values())})")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> tuple[int, MonitorResult | None]:
    """Parse, monitor, publish and print; returns the exit status and the result."""
    args = parser().parse_args(argv)
    try:
        with sigterm_as_interrupt() as stop:
            settings = get_settings(spec=args.spec)
            spec = load_spec(settings.spec, settings.project_dir)
            cfg = get_drift_settings()
            check_mlflow_store(settings)
            root = settings.reports_dir / "monitoring"
            result = monitor_sources(settings, spec, cfg, args.current, args.reference, args.since or None,
                                     args.until or None, out_root=root)
    except UserInputError as e:
        print(f"\nerror: {e}\n", file=sys.stderr)
        return USER_ERROR, None
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from docker stop / the scheduler
        print(f"\n{stop.name}: the drift check was stopped. A run's reports are published whole, in one step at the "
              "end, so reports/monitoring/latest is still the previous run (or this one, complete, if it got that "
              "far).\n", file=sys.stderr)
        return stop.exit_code, None
    print(describe(result, str(root / result.summary["run"])))
    return (DRIFT if result.drift_detected else NO_DRIFT), result


def configure_output() -> None:
    """Warnings and errors only (GX sets some of its loggers to INFO), and no MLflow download progress bars."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None) -> int:
    configure_output()
    return run(argv)[0]


if __name__ == "__main__":
    sys.exit(main())
