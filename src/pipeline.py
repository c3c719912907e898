"""The batch run: check the inputs, copy the raw data once, execute the notebooks in order with papermill.

`make pipeline [DATA=... PROFILE=smoke|full SPEC=...]` runs `python -m src.pipeline`. Bad input stops the run before
anything is written; a failing notebook leaves the registry's champion, `data/raw` and `reports/` as they were
(executed copies are staged in a temporary folder and only moved into `reports/notebooks/` when every notebook passed).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nbs_lib.config import Settings, Spec, UserInputError, configure_mlflow, get_settings, load_spec
from nbs_lib.data import ingest_raw, read_table, require_target, write_synthetic_csv

log = logging.getLogger("pipeline")

PIPELINE_NOTEBOOKS = ("01_eda.ipynb", "02_processing.ipynb", "03_experiments.ipynb", "04_registration.ipynb")
PARALLEL_LEAVES = ("01_eda.ipynb",)  # nothing downstream reads their products: they run beside the main chain


class NotebookFailed(Exception):
    """A notebook raised; the message names it, the failing cell's error and where the executed copy is."""


@dataclass
class PreparedInput:
    raw_path: Path
    sha256: str
    rows: int


def check_mlflow_reachable(settings: Settings) -> None:
    """Fail fast, with the fix, when MLFLOW_TRACKING_URI names a server that does not answer."""
    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
            r.read()
    except (urllib.error.URLError, OSError) as e:
        raise UserInputError(
            f"The MLflow server at MLFLOW_TRACKING_URI={uri} does not answer ({getattr(e, 'reason', e)}). "
            "Start it (e.g. `make up` or `mlflow server`), or unset MLFLOW_TRACKING_URI to use the local "
            f"store sqlite:///models/mlflow.db.") from e


def prepare_input(settings: Settings, spec: Spec, staging: Path) -> PreparedInput:
    """Validate DATA (or generate the default data) and only then copy it, once, into data/raw."""
    from nbs_lib.validation import validate_training_frame

    source = Path(settings.data) if settings.data else write_synthetic_csv(spec, staging / "generated")
    frame = read_table(source, spec)
    require_target(frame, spec, f"DATA file {source}")
    validate_training_frame(frame, spec, source=str(source))  # Data Docs: `make validate`; a run writes reports only on success
    raw_path, sha = ingest_raw(source, settings.raw_dir, name=None if settings.data else f"synthetic-{spec.name}")
    return PreparedInput(raw_path, sha, len(frame))


def start_parent_run(settings: Settings, spec: Spec, prepared: PreparedInput) -> str:
    """One MLflow run per pipeline run; the notebooks resume it, trials nest under it."""
    import mlflow

    from nbs_lib.registry import lineage_tags

    exp_id = configure_mlflow(settings, spec)
    run = mlflow.start_run(experiment_id=exp_id, run_name=f"pipeline-{settings.profile}-{time.strftime('%Y%m%d-%H%M%S')}")
    mlflow.set_tags(lineage_tags(settings, spec, prepared.sha256) | {"pipeline.raw_path": str(prepared.raw_path)})
    mlflow.log_params({"profile": settings.profile, "spec": spec.name, "rows": prepared.rows})
    mlflow.end_run()
    return run.info.run_id


def execute_notebook(settings: Settings, name: str, params: dict, out_dir: Path) -> None:
    """Execute one notebook with papermill; a failing cell becomes `NotebookFailed` naming the notebook and the error."""
    import papermill as pm

    nb_dir = settings.project_dir / "notebooks"
    started = time.perf_counter()
    log.info("running %s", name)
    try:
        pm.execute_notebook(nb_dir / name, out_dir / name, parameters=params, cwd=str(nb_dir), kernel_name="python3",
                            progress_bar=False, request_save_on_cell_execute=False, log_output=False)
    except pm.PapermillExecutionError as e:
        raise NotebookFailed(
            f"Notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}. Nothing was promoted; "
            f"the champion, data/raw and reports/ are unchanged. The executed copy is {out_dir / name}.") from e
    log.info("%s done in %.1f s", name, time.perf_counter() - started)


def execute_notebooks(settings: Settings, spec_path: Path, prepared: PreparedInput, run_id: str, out_dir: Path,
                      work_dir: Path) -> None:
    """Run the notebooks as the DAG they form: EDA (a leaf) beside processing -> experiments, then registration.

    Registration starts only after every other notebook passed, so any failure stops the run before the gate.
    """
    from concurrent.futures import ThreadPoolExecutor

    params = {"spec": str(spec_path), "data": str(prepared.raw_path), "profile": settings.profile,
              "work_dir": str(work_dir), "mlflow_run_id": run_id}
    last = PIPELINE_NOTEBOOKS[-1]
    leaves = [n for n in PIPELINE_NOTEBOOKS[:-1] if n in PARALLEL_LEAVES]
    chain = [n for n in PIPELINE_NOTEBOOKS[:-1] if n not in PARALLEL_LEAVES]
    with ThreadPoolExecutor(max_workers=1) as pool:
        side = [pool.submit(execute_notebook, settings, name, params, out_dir) for name in leaves]
        try:
            for name in chain:
                execute_notebook(settings, name, params, out_dir)
        finally:
            for f in side:
                f.result()  # re-raises a leaf's NotebookFailed
    execute_notebook(settings, last, params, out_dir)


def finish_run(settings: Settings, run_id: str, out_dir: Path, work_dir: Path, status: str) -> dict:
    """Log executed notebooks and the summary to the run; publish the notebooks to reports/ only on success."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    summary = json.loads((work_dir / "summary.json").read_text()) if (work_dir / "summary.json").exists() else {}
    if status == "FINISHED":
        summary_path = work_dir / "run_summary.json"
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        client.log_artifact(run_id, str(summary_path))
        client.log_artifacts(run_id, str(out_dir), artifact_path="notebooks")
        target = settings.reports_dir / "notebooks"
        target.mkdir(parents=True, exist_ok=True)
        for nb in out_dir.glob("*.ipynb"):
            shutil.copy2(nb, target / nb.name)
        shutil.copy2(summary_path, target / "run_summary.json")
    client.set_terminated(run_id, status=status)
    return summary


def run_pipeline(settings: Settings) -> dict:
    """The whole batch run; returns the run summary (gate decision, metrics, lineage)."""
    spec = load_spec(settings.spec, settings.project_dir)
    check_mlflow_reachable(settings)
    staging = Path(tempfile.mkdtemp(prefix="pipeline-"))
    prepared = prepare_input(settings, spec, staging)
    run_id = start_parent_run(settings, spec, prepared)
    out_dir, work_dir = staging / "notebooks", staging / "work"
    out_dir.mkdir()
    work_dir.mkdir()
    try:
        execute_notebooks(settings, settings.spec_path, prepared, run_id, out_dir, work_dir)
    except BaseException:
        finish_run(settings, run_id, out_dir, work_dir, "FAILED")
        raise
    summary = finish_run(settings, run_id, out_dir, work_dir, "FINISHED")
    shutil.rmtree(staging, ignore_errors=True)
    return summary


def describe(summary: dict, settings: Settings) -> str:
    """A few lines a person reads at the end of `make pipeline`."""
    gate = summary.get("gate", {})
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in summary.get("holdout_metrics", {}).items())
    return (f"registered {gate.get('model_name')} v{gate.get('version')}: {gate.get('decision')} ({gate.get('reason')})\n"
            f"holdout: {metrics}\n"
            f"reports: {settings.reports_dir / 'notebooks'}\n"
            f"MLflow UI: mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="", help="dataset spec (default: SPEC or specs/obesity.yaml)")
    parser.add_argument("--data", default="", help="CSV to train on (default: DATA, else generated from the spec)")
    parser.add_argument("--profile", default="", choices=["", "smoke", "full"], help="search profile (default: PROFILE or smoke)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "great_expectations", "papermill", "traitlets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = get_settings(spec=args.spec, data=args.data, profile=args.profile)
        summary = run_pipeline(settings)
    except UserInputError as e:
        print(f"\nerror: {e}\n", file=sys.stderr)
        return 2
    except NotebookFailed as e:
        print(f"\nerror: {e}\n", file=sys.stderr)
        return 1
    print("\n" + describe(summary, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
