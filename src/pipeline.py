"""The batch run: check the inputs, copy the raw data once, execute the notebooks with papermill.

The notebooks run as a DAG (`NOTEBOOK_DEPENDENCIES`), each in a fresh kernel that is started and warmed up (its
modules imported, MLflow's stores opened) while the preflight and earlier notebooks run; see `NotebookRun`.

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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from nbs_lib.config import Settings, Spec, UserInputError, configure_mlflow, get_settings, load_spec
from nbs_lib.data import ingest_raw, read_table, require_target, write_synthetic_csv

log = logging.getLogger("pipeline")

PIPELINE_NOTEBOOKS = ("01_eda.ipynb", "02_processing.ipynb", "03_experiments.ipynb", "04_registration.ipynb")
NOTEBOOK_DEPENDENCIES = {  # the DAG: a notebook starts once the notebooks it reads from have passed
    "01_eda.ipynb": (),
    "02_processing.ipynb": (),
    "03_experiments.ipynb": ("02_processing.ipynb",),
    "04_registration.ipynb": ("01_eda.ipynb", "03_experiments.ipynb"),  # the gate: only after every other notebook passed
}


KERNEL_ARGUMENTS = [
    "--HistoryManager.hist_file=:memory:",  # as papermill's own kernels: parallel kernels share no history file
    "--IPKernelApp.log_level=ERROR",  # not the "running over TCP without encryption" note, once per kernel
]


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


class DependencyFailed(Exception):
    """A notebook did not start because one it depends on failed (that failure is the one reported)."""


def notebook_modules(nb_path: Path) -> list[str]:
    """The modules a notebook's code cells import at top level, in order (what a warm kernel imports ahead)."""
    import ast

    modules: list[str] = []
    for cell in json.loads(nb_path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        try:
            tree = ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines()))
        except SyntaxError:
            continue
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            modules += [m for m in names if m != "__future__" and m not in modules]
    return modules


def silent_code(body: str) -> str:
    """`body` wrapped so it binds no names in the notebook's namespace and never raises (a warm-up is best effort)."""
    indented = "\n".join("        " + line for line in body.strip().splitlines())
    return f"def _warm_up():\n    try:\n{indented}\n    except Exception:\n        pass\n_warm_up()\ndel _warm_up\n"


def import_warm_up(modules: list[str]) -> str:
    """Code that imports `modules` (each on its own: one that fails to import is the notebook's to report)."""
    return silent_code(f"import importlib\nfor m in {modules!r}:\n    try:\n        importlib.import_module(m)\n"
                       "    except Exception:\n        pass")


def mlflow_warm_up(tracking_uri: str) -> str:
    """Code that opens the MLflow tracking and registry stores: MLflow caches them per process, and opening a
    SQL store checks its schema (about a second), so a notebook that logs or registers starts with them open."""
    return silent_code(f"import mlflow\nclient = mlflow.MlflowClient(tracking_uri={tracking_uri!r})\n"
                       "client.search_registered_models(max_results=1)")


@dataclass
class WarmKernel:
    manager: object  # the jupyter_client kernel manager papermill executes the notebook in
    client: object   # the client that warmed it up

    def queue(self, code: str) -> None:
        """Send `code` to run silently before the notebook's first cell, without waiting (the kernel runs its
        requests in order). `stop_on_error=False`: even a failure here could not abort the cells queued behind it."""
        self.client.execute(code, silent=True, store_history=False, stop_on_error=False)


@contextmanager
def warm_kernel(nb_path: Path, modules: list[str]):
    """A python3 kernel started now, in this thread, with `modules` (the notebook's imports) already loaded.

    papermill would start the kernel when the notebook's turn comes and pay its imports then; started ahead (while
    the preflight and earlier notebooks run) both costs leave the critical path. The warm-up runs silently and binds
    no names, so the notebook still starts from an empty namespace at execution count 1. It assumes, as the notebooks
    here do, that importing a module has no effect the notebook's own cells must precede (they import first).
    """
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    clients = []

    class RecordingKernelManager(AsyncKernelManager):  # so the clients papermill opens can be closed with the kernel
        def client(self, **kwargs):
            kc = super().client(**kwargs)
            clients.append(kc)
            return kc

    km = RecordingKernelManager(kernel_name="python3")
    started = time.perf_counter()
    run_sync(km.start_kernel)(cwd=str(nb_path.parent), extra_arguments=KERNEL_ARGUMENTS)
    try:
        warm = km.client()
        warm.start_channels()
        run_sync(warm.wait_for_ready)(timeout=60)
        run_sync(warm.execute_interactive)(import_warm_up(modules), silent=True, store_history=False, timeout=300,
                                           output_hook=lambda msg: None)
        log.debug("kernel for %s warm in %.1f s", nb_path.name, time.perf_counter() - started)
        yield WarmKernel(km, warm)
    finally:
        for kc in clients:
            kc.stop_channels()
        run_sync(km.shutdown_kernel)(now=True)


def execute_notebook(settings: Settings, name: str, params: dict, out_dir: Path, km=None) -> None:
    """Execute one notebook with papermill (in `km`'s kernel when given); a failing cell becomes `NotebookFailed`."""
    import papermill as pm

    nb_dir = settings.project_dir / "notebooks"
    started = time.perf_counter()
    log.info("running %s", name)
    try:
        pm.execute_notebook(nb_dir / name, out_dir / name, parameters=params, cwd=str(nb_dir), kernel_name="python3",
                            progress_bar=False, request_save_on_cell_execute=False, log_output=False,
                            **({"km": km} if km is not None else {}))
    except pm.PapermillExecutionError as e:
        raise NotebookFailed(
            f"Notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}. Nothing was promoted; "
            f"the champion, data/raw and reports/ are unchanged. The executed copy is {out_dir / name}.") from e
    except Exception as e:  # nbclient's DeadKernelError and the like: the kernel itself is gone
        raise NotebookFailed(
            f"Notebook {name} stopped: {type(e).__name__}: {str(e)[:300]}. Its kernel died or stopped answering "
            "(out of memory? see `dmesg`); try PROFILE=smoke or a machine with more memory. Nothing was promoted; "
            "the champion, data/raw and reports/ are unchanged.") from e
    log.info("%s done in %.1f s", name, time.perf_counter() - started)


def notebook_parameters(settings: Settings, prepared: PreparedInput, run_id: str, work_dir: Path) -> dict:
    """The papermill parameters every pipeline notebook receives."""
    return {"spec": str(settings.spec_path), "data": str(prepared.raw_path), "profile": settings.profile,
            "work_dir": str(work_dir), "mlflow_run_id": run_id}


def warm_up_order(dependencies: dict[str, tuple[str, ...]] = NOTEBOOK_DEPENDENCIES) -> list[str]:
    """Notebooks in the order their kernels should warm up: the longest dependency chain first, in its own order.

    A notebook off that chain (EDA) runs beside it and is only awaited at the end, so its kernel can come last.
    """
    def chain(name: str) -> list[str]:
        longest = max((chain(dep) for dep in dependencies[name]), key=len, default=[])
        return [*longest, name]

    critical = max((chain(n) for n in dependencies), key=len)
    return critical + [n for n in dependencies if n not in critical]


class NotebookRun:
    """The notebooks as the DAG in `NOTEBOOK_DEPENDENCIES`: EDA beside processing -> experiments, then registration.

    Each notebook has its own thread and its own kernel. The kernels warm up (see `warm_kernel`) from the moment
    this object exists, in `warm_up_order`, at most one per spare core at a time: the preflight runs on one core,
    so they hide behind it and behind the notebooks before them rather than slowing it down. `run(params)` then
    executes the notebooks; each starts when its dependencies have passed. Registration comes last, so a failure
    anywhere stops the run before the gate, and the first notebook that failed is the one reported. Leaving the
    `with` block without `run` (the preflight refused the input) releases the kernels without executing anything.
    """

    def __init__(self, settings: Settings, out_dir: Path):
        import os
        import threading
        from concurrent.futures import Future, ThreadPoolExecutor

        self.settings, self.out_dir = settings, out_dir
        self._params: Future = Future()
        self._order = warm_up_order()
        self._turns = {name: threading.Event() for name in self._order}
        self._lock = threading.Lock()
        self._next_turn = 0
        for _ in range(max(1, (os.cpu_count() or 2) - 1)):
            self._pass_turn()
        self._pool = ThreadPoolExecutor(max_workers=len(PIPELINE_NOTEBOOKS), thread_name_prefix="notebook")
        self.futures: dict[str, Future] = {}
        for name in PIPELINE_NOTEBOOKS:  # dependencies come first, so `futures[dep]` exists when `_run` looks
            self.futures[name] = self._pool.submit(self._run, name)

    def _pass_turn(self) -> None:
        """Let the next kernel in `warm_up_order` start warming up."""
        with self._lock:
            if self._next_turn < len(self._order):
                self._turns[self._order[self._next_turn]].set()
                self._next_turn += 1

    def _run(self, name: str) -> None:
        nb_path = self.settings.project_dir / "notebooks" / name
        modules = notebook_modules(nb_path)
        with ExitStack() as stack:
            self._turns[name].wait()
            try:
                if self._params.done() and self._params.exception() is not None:
                    raise self._params.exception()  # called off before this kernel started: start none
                kernel = stack.enter_context(warm_kernel(nb_path, modules))
            finally:
                self._pass_turn()
            params = self._params.result()  # raises DependencyFailed when the run was called off
            if "mlflow" in modules:  # the store exists now (the parent run is in it): open it while dependencies run
                kernel.queue(mlflow_warm_up(self.settings.mlflow_tracking_uri))
            for dep in NOTEBOOK_DEPENDENCIES[name]:
                if self.futures[dep].exception() is not None:
                    raise DependencyFailed(f"{name} did not run: {dep} failed")
            execute_notebook(self.settings, name, params, self.out_dir, kernel.manager)

    def run(self, params: dict) -> None:
        """Execute every notebook with `params`; raise the first failure (`NotebookFailed`)."""
        self._params.set_result(params)
        errors = [e for e in (f.exception() for f in self.futures.values()) if e is not None]
        first = next((e for e in errors if not isinstance(e, DependencyFailed)), errors[0] if errors else None)
        if first is not None:
            raise first

    def __enter__(self) -> NotebookRun:
        return self

    def __exit__(self, *exc) -> None:
        if not self._params.done():
            self._params.set_exception(DependencyFailed("the run stopped before its notebooks"))
            for turn in self._turns.values():
                turn.set()  # kernels not started yet are not started at all
        self._pool.shutdown(wait=exc[0] is None)  # an error is reported at once; started kernels stop behind it


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


def run_pipeline(settings: Settings, timings: dict[str, float] | None = None) -> dict:
    """The whole batch run; returns the run summary (gate decision, metrics, lineage).

    `timings`, when given, receives the seconds spent in the preflight and in the notebooks (`make bench-pipeline`)."""
    timings = {} if timings is None else timings
    started = time.perf_counter()
    spec = load_spec(settings.spec, settings.project_dir)
    check_mlflow_reachable(settings)
    staging = Path(tempfile.mkdtemp(prefix="pipeline-"))
    out_dir, work_dir = staging / "notebooks", staging / "work"
    out_dir.mkdir()
    work_dir.mkdir()
    try:
        with NotebookRun(settings, out_dir) as notebooks:  # kernels warm up beside the preflight
            prepared = prepare_input(settings, spec, staging)
            run_id = start_parent_run(settings, spec, prepared)
            timings["preflight"] = time.perf_counter() - started
            try:
                notebooks.run(notebook_parameters(settings, prepared, run_id, work_dir))
                timings["notebooks"] = time.perf_counter() - started - timings["preflight"]
            except BaseException:
                finish_run(settings, run_id, out_dir, work_dir, "FAILED")
                raise
    except UserInputError:
        shutil.rmtree(staging, ignore_errors=True)  # nothing ran; a failed notebook's copy is kept for reading
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
