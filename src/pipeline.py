"""The batch run: check the inputs, copy the raw data once, execute the notebooks with papermill.

The pipeline notebooks run in dependency order, each with stock papermill in a fresh kernel of its own, so a
notebook sees only what the ones before it wrote (`nbs_lib.config.Products`), never their variables.

`make pipeline [DATA=... PROFILE=smoke|full SPEC=...]` runs `python -m src.pipeline`. Bad input stops the run before
anything is written; a failing notebook leaves the registry's champion, `data/raw` and `reports/` as they were
(executed copies are staged in a temporary folder and only moved into `reports/notebooks/` when every notebook passed).
Ctrl-C interrupts the running notebook and starts no other, with the same guarantee (exit 130; SIGTERM: 143).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from jupyter_client.manager import AsyncKernelManager

from nbs_lib.config import (
    Products,
    Settings,
    Spec,
    UserInputError,
    check_mlflow_store,
    check_optuna_storage,
    configure_mlflow,
    get_settings,
    load_spec,
)
from nbs_lib.data import ingest_raw, read_table, require_target, write_synthetic_csv
from src.signals import sigterm_as_interrupt

log = logging.getLogger("pipeline")

PIPELINE_NOTEBOOKS = (  # in the order they run: each reads what the ones before it wrote; the registry (the gate) last
    "03_eda.ipynb", "04_processing.ipynb", "05_tuning.ipynb", "07_registry.ipynb")

KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]  # not the "running over TCP without encryption" note, per kernel


class OwnedKernel(AsyncKernelManager):
    """A kernel manager handed to papermill, which then leaves the kernel to us: it remembers the clients it makes,
    so `close` closes their channels with the kernel (nbclient closes them only for kernels it owns)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.made: list = []

    def client(self, **kwargs):
        self.made.append(super().client(**kwargs))
        return self.made[-1]

    def stop(self) -> None:
        "Kill the kernel now, if it runs (papermill, waiting on it, then fails with DeadKernelError)."
        from jupyter_core.utils import run_sync

        if self.has_kernel:
            try:
                run_sync(self.shutdown_kernel)(now=True)
            except Exception as e:  # a kernel already gone has nothing left to stop
                log.debug("stopping the kernel: %r", e)

    def close(self) -> None:
        "Stop the kernel and close every client's channels; safe to call again."
        self.stop()
        while self.made:
            self.made.pop().stop_channels()


class NotebookFailed(Exception):
    """A notebook raised; the message names it, the failing cell's error and where the executed copy is."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run; `notebook` is the one that was running (None: before the first began)."""

    def __init__(self, notebook: str | None, promoted_version: str | None = None):
        super().__init__(notebook)
        self.notebook, self.promoted_version = notebook, promoted_version


def execute_notebook(settings: Settings, name: str, params: dict, out_dir: Path) -> None:
    """Execute one notebook with papermill in a fresh kernel of its own; a failing cell becomes `NotebookFailed`.

    papermill runs in a worker thread while this (main) thread waits. Ctrl-C or SIGTERM (see `src.signals`) lands
    here, never in nbclient's event loop, which outside the main thread installs no signal handlers of its own (in
    it, nbclient would take SIGINT and SIGTERM over and reset them to the defaults when done). The kernel runs in a
    session of its own, where a terminal's Ctrl-C does not reach it, so on an interrupt this thread kills it and
    waits for papermill to notice: nothing the notebook does can follow (registration cannot promote after it).
    """
    import papermill as pm

    kernel = OwnedKernel(kernel_name="python3")
    nb_dir = settings.project_dir / "notebooks"
    started = time.perf_counter()
    log.info("running %s", name)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        done = pool.submit(pm.execute_notebook, nb_dir / name, out_dir / name, parameters=params, cwd=str(nb_dir),
                           kernel_name="python3", progress_bar=False, log_output=False, km=kernel,
                           extra_arguments=KERNEL_ARGUMENTS)
        try:
            done.result()
        except KeyboardInterrupt:
            kernel.stop()
            with suppress(KeyboardInterrupt, TimeoutError):  # Ctrl-C again, or papermill slow to notice: stop waiting
                done.exception(timeout=30)  # papermill's error for the dead kernel: the interrupt is what is reported
            raise RunInterrupted(name) from None
        except pm.PapermillExecutionError as e:
            raise NotebookFailed(
                f"Notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}. Nothing was promoted; "
                f"the champion, data/raw and reports/ are unchanged. The executed copy is {out_dir / name}.") from e
        except Exception as e:  # nbclient's DeadKernelError and the like: the kernel itself is gone
            raise NotebookFailed(
                f"Notebook {name} stopped: {type(e).__name__}: {str(e)[:300]}. Its kernel died or stopped answering "
                "(out of memory? see `dmesg`); try PROFILE=smoke or a machine with more memory. Nothing was promoted; "
                "the champion, data/raw and reports/ are unchanged.") from e
        finally:
            kernel.close()
    log.info("%s done in %.1f s", name, time.perf_counter() - started)


def execute_notebooks(settings: Settings, params: dict, out_dir: Path,
                      notebooks: tuple[str, ...] = PIPELINE_NOTEBOOKS) -> None:
    """Each notebook in turn; the first that fails stops the run, so registration never follows a failure."""
    for name in notebooks:
        execute_notebook(settings, name, params, out_dir)


@dataclass
class PreparedInput:
    raw_path: Path
    sha256: str
    rows: int


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


def notebook_parameters(settings: Settings, prepared: PreparedInput, run_id: str, work_dir: Path) -> dict:
    """The papermill parameters every pipeline notebook receives."""
    return {"spec": str(settings.spec_path), "data": str(prepared.raw_path), "profile": settings.profile,
            "work_dir": str(work_dir), "mlflow_run_id": run_id}


def notebooks_as_html(out_dir: Path, html_dir: Path) -> None:
    """Each executed notebook as one self-contained HTML page (images inline, no script from a CDN): the MLflow UI
    shows an HTML artifact in the browser, so the run's notebooks read there as they do in `reports/`."""
    import nbformat
    from nbconvert import HTMLExporter

    no_cdn = dict.fromkeys(["mathjax_url", "require_js_url", "mermaid_js_url", "mermaid_layout_elk_js_url",
                            "jquery_url", "jupyter_widgets_base_url", "widget_renderer_url"], "")
    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, **no_cdn)
    html_dir.mkdir(parents=True, exist_ok=True)
    for nb in sorted(out_dir.glob("*.ipynb")):
        body, _ = exporter.from_notebook_node(nbformat.read(nb, as_version=4))
        (html_dir / f"{nb.stem}.html").write_text(body)


def finish_run(settings: Settings, run_id: str, out_dir: Path, work_dir: Path, status: str) -> dict:
    """Log executed notebooks (and their HTML) and the summary to the run; publish the notebooks to reports/ only
    on success."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    products = Products(work_dir)
    summary = json.loads(products.summary.read_text()) if products.summary.exists() else {}
    if status == "FINISHED":
        summary_path = work_dir / "run_summary.json"
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        client.log_artifact(run_id, str(summary_path))
        client.log_artifacts(run_id, str(out_dir), artifact_path="notebooks")
        notebooks_as_html(out_dir, work_dir / "html")
        client.log_artifacts(run_id, str(work_dir / "html"), artifact_path="notebooks/html")
        with FileLock(settings.reports_dir / ".notebooks.lock"):   # runs finishing together publish in turn, not a mix
            (target := settings.reports_dir / "notebooks").mkdir(parents=True, exist_ok=True)
            for path in [*out_dir.glob("*.ipynb"), summary_path]:
                shutil.copy2(path, target / path.name)
    client.set_terminated(run_id, status=status)
    return summary


def run_pipeline(settings: Settings, timings: dict[str, float] | None = None) -> dict:
    """The whole batch run; returns the run summary (gate decision, metrics, lineage).

    `timings`, when given, receives the seconds spent in the preflight and in the notebooks (`make bench-pipeline`)."""
    timings = {} if timings is None else timings
    started = time.perf_counter()
    spec = load_spec(settings.spec, settings.project_dir)
    check_mlflow_store(settings)
    check_optuna_storage(settings)
    staging = Path(tempfile.mkdtemp(prefix="pipeline-"))
    out_dir, work_dir = staging / "notebooks", staging / "work"
    out_dir.mkdir()
    work_dir.mkdir()
    try:
        prepared = prepare_input(settings, spec, staging)
        run_id = start_parent_run(settings, spec, prepared)
        timings["preflight"] = time.perf_counter() - started
        try:
            execute_notebooks(settings, notebook_parameters(settings, prepared, run_id, work_dir), out_dir)
            timings["notebooks"] = time.perf_counter() - started - timings["preflight"]
        except RunInterrupted as e:
            finish_run(settings, run_id, out_dir, work_dir, "KILLED")
            raise RunInterrupted(e.notebook, promoted_by(settings, spec, run_id)) from None
        except BaseException:
            finish_run(settings, run_id, out_dir, work_dir, "FAILED")
            raise
    except (UserInputError, RunInterrupted) as e:
        if not getattr(e, "notebook", None):
            shutil.rmtree(staging, ignore_errors=True)  # nothing ran; a stopped notebook's copy is kept for reading
        raise
    except KeyboardInterrupt:  # during the preflight: no notebook began
        shutil.rmtree(staging, ignore_errors=True)
        raise RunInterrupted(None) from None
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


def promoted_by(settings: Settings, spec: Spec, run_id: str) -> str | None:
    """The version this run moved the alias to, if it got that far (the alias moves in registration's last step)."""
    from mlflow.tracking import MlflowClient

    from nbs_lib.champion import champion_version

    champ = champion_version(MlflowClient(), spec.model_name, settings.model_alias)
    return str(champ.version) if champ is not None and champ.run_id == run_id else None


def interrupted_message(e: KeyboardInterrupt) -> str:
    """What Ctrl-C stopped, and what it left."""
    notebook, promoted = getattr(e, "notebook", None), getattr(e, "promoted_version", None)
    if not notebook:
        return "interrupted before any notebook ran: nothing was trained or registered; reports/ is as it was."
    left = (f"Registration had already moved the champion alias to v{promoted}" if promoted else
            "Nothing was promoted (the champion is where it was)")
    return (f"interrupted while {notebook} ran: the run stopped and is marked KILLED in MLflow. {left}; "
            "data/raw and reports/ are as they were.")


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
        with sigterm_as_interrupt() as stop:
            settings = get_settings(spec=args.spec, data=args.data, profile=args.profile)
            summary = run_pipeline(settings)
    except UserInputError as e:
        print(f"\nerror: {e}\n", file=sys.stderr)
        return 2
    except NotebookFailed as e:
        print(f"\nerror: {e}\n", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        by = "" if stop.signum == signal.SIGINT else f"{stop.name}: "
        print(f"\n{by}{interrupted_message(e)}\n", file=sys.stderr)
        return stop.exit_code  # 130 for Ctrl-C, 143 for SIGTERM (docker stop), as a shell reports them
    print("\n" + describe(summary, settings))
    if not beat_baseline(summary):
        print("\nerror: the model does not beat the dummy baseline (see above), so it was registered but not promoted; "
              "the champion is where it was.\n", file=sys.stderr)
        return 1
    return 0


def beat_baseline(summary: dict) -> bool:
    """False when the registered model scored no better than the dummy baseline: its data taught it nothing."""
    from nbs_lib.config import METRIC_DIRECTIONS
    from nbs_lib.registry import beats

    gate = summary.get("gate", {})
    if gate.get("baseline_score") is None:
        return True
    return beats(gate["challenger_score"], gate["baseline_score"], METRIC_DIRECTIONS[gate["metric"]] == "maximize")


if __name__ == "__main__":
    sys.exit(main())
