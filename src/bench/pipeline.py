"""`make bench-pipeline`: what papermill costs. The same notebooks run twice on the same data and settings, each
into its own empty store: once by the pipeline (stock papermill, a fresh kernel per notebook), once as one plain
Python process that executes the same code cells with the same parameters. Prints wall times and their ratio.

The target is on `PROFILE=full` (minutes of search, where a kernel's start and imports per notebook are noise):
papermill at most 1.05x the plain script. On the smoke profile the same fixed costs are a large share of a short
run; its ratio is reported, not a target."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROCESS_START = time.perf_counter()  # before the heavy imports (all below, inside functions): a plain script pays them too

NOTEBOOK_ENV = ("MODELS_DIR", "DATA_DIR", "REPORTS_DIR", "MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "PREDICTION_LOG")


def isolated(root: Path) -> dict[str, str]:
    return {"MODELS_DIR": str(root / "models"), "DATA_DIR": str(root / "data"), "REPORTS_DIR": str(root / "reports"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'models' / 'mlflow.db'}",
            "OPTUNA_STORAGE": f"sqlite:///{root / 'models' / 'optuna.db'}", "PREDICTION_LOG": str(root / "predictions.db")}


def code_cells(nb_path: Path, params: dict) -> list[str]:
    """The notebook's code cells, with the parameters cell replaced by the injected values (as papermill does)."""
    nb = json.loads(nb_path.read_text())
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "\n".join(f"{k} = {v!r}" for k, v in params.items())
        out.append(src)
    return out


def run_plain(settings, spec, stage: Path) -> dict[str, float]:
    """Preflight exactly as the pipeline does, then exec every notebook's cells in this one process."""
    t0 = time.perf_counter()  # the imports below are preflight costs for papermill's runner too
    import matplotlib

    matplotlib.use("Agg")
    import mlflow

    from src.pipeline import (
        PIPELINE_NOTEBOOKS,
        finish_run,
        notebook_parameters,
        prepare_input,
        start_parent_run,
    )

    times = {}
    prepared = prepare_input(settings, spec, stage)
    run_id = start_parent_run(settings, spec, prepared)
    times["preflight"] = time.perf_counter() - t0
    work = stage / "work"
    work.mkdir()
    params = notebook_parameters(settings, prepared, run_id, work)
    cwd = os.getcwd()
    os.chdir(settings.project_dir / "notebooks")
    try:
        for name in PIPELINE_NOTEBOOKS:
            t = time.perf_counter()
            namespace: dict = {"__name__": "__main__"}
            for i, src in enumerate(code_cells(settings.project_dir / "notebooks" / name, params)):
                exec(compile(src, f"{name}[{i}]", "exec"), namespace)
            mlflow.end_run()
            times[name] = time.perf_counter() - t
        times["notebooks"] = sum(times[n] for n in PIPELINE_NOTEBOOKS)
    finally:
        os.chdir(cwd)
    (stage / "notebooks").mkdir(exist_ok=True)
    finish_run(settings, run_id, stage / "notebooks", work, "FINISHED")
    return times


def run_papermill(settings, spec, stage: Path) -> dict[str, float]:
    """The pipeline itself (`run_pipeline`), with its own preflight and notebook timings."""
    from src.pipeline import run_pipeline

    times: dict[str, float] = {}
    run_pipeline(settings, times)
    return times


def run_one(runner: str) -> dict[str, float]:
    """One runner in this (fresh) process, timed from process start so imports count as they would for a user."""
    import logging

    from nbs_lib.config import get_settings, load_spec

    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix=f"bench-{runner}-"))
    os.environ.update(isolated(root))
    settings = get_settings()
    spec = load_spec(settings.spec, settings.project_dir)
    (root / "stage").mkdir()
    times = (run_papermill if runner == "papermill" else run_plain)(settings, spec, root / "stage")
    times["total"] = time.perf_counter() - PROCESS_START
    shutil.rmtree(root, ignore_errors=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two runners this many times (median reported)")
    parser.add_argument("--runner", choices=["papermill", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runner:
        print(json.dumps(run_one(args.runner)))
        return 0
    import subprocess

    results: dict[str, list[dict]] = {"papermill": [], "plain": []}
    for r in range(args.rounds):
        for runner in ("papermill", "plain"):
            proc = subprocess.run([sys.executable, "-m", "src.bench.pipeline", "--runner", runner], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            times = json.loads(proc.stdout.strip().splitlines()[-1])
            results[runner].append(times)
            print(f"round {r + 1}: {runner:9s} {times['total']:.1f} s", flush=True)

    def median(runner: str, key: str) -> float:
        vals = sorted(t[key] for t in results[runner])
        return vals[len(vals) // 2]

    from nbs_lib.config import get_settings

    s = get_settings()
    print(f"\nbench-pipeline: profile={s.profile} data={s.data or 'generated'} spec={s.spec} rounds={args.rounds}")
    print(f"{'step':24s} {'papermill s':>12s} {'plain s':>10s} {'ratio':>7s}")
    for k in results["plain"][0]:
        pl = median("plain", k)
        pm = median("papermill", k) if k in results["papermill"][0] else None
        print(f"{k:24s} {pm if pm is not None else float('nan'):12.2f} {pl:10.2f} " + (f"{pm / pl:7.2f}x" if pm else "       "))
    ratio = median("papermill", "total") / median("plain", "total")
    target = "target <= 1.05x" if s.profile == "full" else "reported, not a target: the target is on PROFILE=full"
    print(f"papermill / plain, total: {ratio:.3f}x ({target})")
    print("Each runner is a fresh process (imports included in total). papermill runs each notebook in a fresh kernel"
          " of its own; plain runs the same cells in order in one process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
