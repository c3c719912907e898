"""The pipeline's notebooks run in order in one warm kernel, with papermill.

The kernel is started and warmed up (every module the notebooks import loaded, MLflow's stores opened) while the
pipeline's preflight runs, and reset between notebooks so each starts from an empty namespace at execution count
1; see `NotebookRun`. The first failing notebook stops the run (`NotebookFailed`); Ctrl-C interrupts the running
cell and starts no other notebook (`RunInterrupted`). `src.pipeline` wraps this in the batch run.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nbs_lib.config import Settings

log = logging.getLogger("pipeline")

PIPELINE_NOTEBOOKS = (  # in the order they run: each reads what the ones before it wrote; registration (the gate) last
    "01_eda.ipynb", "02_processing.ipynb", "03_experiments.ipynb", "04_registration.ipynb")

KERNEL_ARGUMENTS = [
    "--HistoryManager.hist_file=:memory:",  # as papermill's own kernels: kernels of parallel runs share no history file
    "--IPKernelApp.log_level=ERROR",  # not the "running over TCP without encryption" note, once per kernel
]


class NotebookFailed(Exception):
    """A notebook raised; the message names it, the failing cell's error and where the executed copy is."""


class RunCalledOff(Exception):
    """The preflight refused the input, so no notebook runs (that refusal is the error reported)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run; `notebook` is the one that was running (None: before the first began)."""

    def __init__(self, notebook: str | None, promoted_version: str | None = None):
        super().__init__(notebook)
        self.notebook, self.promoted_version = notebook, promoted_version


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


def kernel_call(function, *args) -> str:
    """Code that defines `function` in the kernel (its source as this module was imported: an edit during a run
    cannot change it), calls it with `args` (literals) and leaves no name behind. The functions it sends catch their
    own errors: a warm-up is best effort, and a failure in one could not abort the cells queued behind it."""
    name = function.__name__
    return f"{KERNEL_SOURCES[name]}\n{name}(*{args!r})\nglobals().pop({name!r}, None)\n"


def _import_modules(modules: list[str]) -> None:
    """Runs in the kernel: import each module on its own (one that fails to import is the notebook's to report)."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except Exception:
            pass


def _open_mlflow_stores(tracking_uri: str) -> None:
    """Runs in the kernel: open MLflow's tracking and registry stores. MLflow caches them per process, and opening
    a SQL store checks its schema (about half a second), so the notebooks that log or register find them open."""
    try:
        import mlflow

        mlflow.MlflowClient(tracking_uri=tracking_uri).search_registered_models(max_results=1)
    except Exception:
        pass


def _snapshot_kernel_state() -> None:
    """Runs in the kernel after the warm-up imports: the state `_restore_kernel_state` puts back before each notebook."""
    import logging
    import os
    import sys
    import types
    import warnings

    state = types.ModuleType("_pipeline_kernel_state")  # kept in sys.modules, where IPython's reset does not look
    state.cwd, state.environ, state.path = os.getcwd(), dict(os.environ), list(sys.path)
    state.warnings, root = list(warnings.filters), logging.getLogger()
    state.logging = (root.level, list(root.handlers))
    mpl = sys.modules.get("matplotlib")
    state.rcparams = {k: v for k, v in dict(mpl.rcParams.copy()).items() if k != "backend"} if mpl else None  # as rc_context
    sys.modules[state.__name__] = state


def _restore_kernel_state() -> None:
    """Runs in the kernel between notebooks: end MLflow runs left open, close figures, put back matplotlib's
    rcParams, the working directory, environment, sys.path, warning filters and root logger as the warm-up left
    them, then empty the namespace and restart the execution count (IPython's reset). Each step is best effort;
    the reset always runs."""
    import logging
    import os
    import sys
    import warnings

    state, mlflow = sys.modules.get("_pipeline_kernel_state"), sys.modules.get("mlflow")
    plt, mpl = sys.modules.get("matplotlib.pyplot"), sys.modules.get("matplotlib")

    def end_runs():
        for _ in range(100):  # nested runs: one end_run each
            if mlflow.active_run() is None:
                break
            mlflow.end_run()

    def restore_process():
        os.chdir(state.cwd)
        os.environ.clear()
        os.environ.update(state.environ)
        sys.path[:] = state.path
        root = logging.getLogger()
        root.setLevel(state.logging[0])
        root.handlers[:] = state.logging[1]
        warnings.filters[:] = state.warnings
        getattr(warnings, "_filters_mutated", lambda: None)()  # CPython's cue to drop its cached filter decisions

    steps = [end_runs] if mlflow else []
    steps += [lambda: plt.close("all")] if plt else []
    steps += [lambda: dict.update(mpl.rcParams, state.rcparams)] if mpl and state and state.rcparams else []  # as rc_context
    steps += [restore_process] if state else []
    for step in steps:
        try:
            step()
        except Exception:
            pass
    sys.modules["IPython"].get_ipython().reset(new_session=True)


KERNEL_SOURCES = {f.__name__: inspect.getsource(f)
                  for f in (_import_modules, _open_mlflow_stores, _snapshot_kernel_state, _restore_kernel_state)}


def import_warm_up(modules: list[str]) -> str:
    """Code that imports `modules`, then records the process state the notebooks start from (for `RESET_CODE`)."""
    return kernel_call(_import_modules, modules) + kernel_call(_snapshot_kernel_state)


RESET_CODE = kernel_call(_restore_kernel_state)  # before each notebook after the first; imported modules stay loaded


def mlflow_store_ready(tracking_uri: str) -> bool:
    """Whether the kernel may open the store before the parent run exists: a server, or a SQLite file already there.
    (A new store is created by the preflight; opening it from two processes at once would race on its tables.)"""
    if tracking_uri.startswith(("http://", "https://")):
        return True
    return tracking_uri.startswith("sqlite:///") and Path(tracking_uri.removeprefix("sqlite:///")).is_file()


def _ready_once_client_class():
    from jupyter_client.asynchronous import AsyncKernelClient

    class ReadyOnceClient(AsyncKernelClient):
        """Connects and checks the kernel once. papermill asks for a client and waits for it to be ready for every
        notebook; the check ends by waiting 0.2 s for IOPub to fall quiet, which a connected client need not repeat."""
        _ready = False

        def start_channels(self, *args, **kwargs) -> None:
            if not self.channels_running:
                super().start_channels(*args, **kwargs)

        async def wait_for_ready(self, timeout: float | None = None) -> None:
            if not self._ready:
                await super()._async_wait_for_ready(timeout)
                self._ready = True

    return ReadyOnceClient


@dataclass
class WarmKernel:
    manager: object  # the jupyter_client kernel manager papermill executes the notebooks in
    client: object   # the one client every caller gets (see `_ready_once_client_class`)

    def queue(self, code: str) -> None:
        """Send `code` to run silently before the next notebook's first cell, without waiting (the kernel runs its
        requests in order). `stop_on_error=False`: even a failure here could not abort the cells queued behind it."""
        self.client.execute(code, silent=True, store_history=False, stop_on_error=False)


@contextmanager
def warm_kernel(nb_dir: Path, modules: list[str]):
    """A python3 kernel started now, in this thread, with `modules` (the notebooks' imports) already loaded.

    papermill would start a kernel when a notebook's turn comes and pay its imports then; started ahead (while the
    preflight runs) both costs leave the critical path. The warm-up runs silently and binds no names, so a notebook
    still starts from an empty namespace at execution count 1. It assumes, as the notebooks here do, that importing
    a module has no effect the notebook's own cells must precede (they import first).
    """
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    class SharedClientKernelManager(AsyncKernelManager):
        """Hands the warm-up and every papermill call the same connected client."""
        shared = None

        def client(self, **kwargs):
            if self.shared is None:
                self.shared = super().client(**kwargs)
            return self.shared

    km = SharedClientKernelManager(kernel_name="python3", client_factory=_ready_once_client_class())
    started = time.perf_counter()
    run_sync(km.start_kernel)(cwd=str(nb_dir), extra_arguments=KERNEL_ARGUMENTS)
    try:
        warm = km.client()
        warm.start_channels()
        run_sync(warm.wait_for_ready)(timeout=60)
        run_sync(warm.execute_interactive)(import_warm_up(modules), silent=True, store_history=False, timeout=300,
                                           output_hook=lambda msg: None)
        log.debug("kernel warm in %.1f s", time.perf_counter() - started)
        yield WarmKernel(km, warm)
    finally:
        if km.shared is not None:
            km.shared.stop_channels()
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


class NotebookRun:
    """The pipeline notebooks, in order, in one kernel that starts and warms up while the preflight runs.

    From the moment this object exists, a thread starts the kernel and imports every module the notebooks import
    (on the core the single-threaded preflight leaves idle), and opens MLflow's stores as soon as they exist.
    `run(params)` then executes the notebooks one after another with papermill. Before each notebook after the first,
    the kernel is reset (`RESET_CODE`): the notebook starts from an empty namespace at execution count 1, in the
    process state the warm-up left; only imported modules carry over, as they would in one plain Python process.
    The first notebook that fails stops the run, so registration (the last) never follows a failure. Leaving the
    `with` block without `run` (the preflight refused the input) stops the kernel without executing anything.

    Ctrl-C reaches only this process (jupyter_client starts kernels in a session of their own), so `run` passes it
    on: no further notebook starts, the kernel's running cell is interrupted, and `run` returns (raising
    `RunInterrupted`) only once the notebook has unwound, so nothing the kernel does can follow the interrupt.
    """

    def __init__(self, settings: Settings, out_dir: Path, notebooks: tuple[str, ...] = PIPELINE_NOTEBOOKS):
        import threading
        from concurrent.futures import Future, ThreadPoolExecutor

        self.settings, self.out_dir, self.notebooks = settings, out_dir, notebooks
        self._params: Future = Future()
        self._stopping = threading.Event()
        self._kernel: WarmKernel | None = None
        self.current: str | None = None  # the notebook running now (the last one started)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notebooks")
        self._done = self._pool.submit(self._run)

    def _run(self) -> None:
        nb_dir = self.settings.project_dir / "notebooks"
        modules = list(dict.fromkeys(m for name in self.notebooks for m in notebook_modules(nb_dir / name)))
        if self._params.done() and self._params.exception() is not None:
            raise self._params.exception()  # called off before the kernel started: start none
        with warm_kernel(nb_dir, modules) as kernel:
            self._kernel = kernel
            uri = self.settings.mlflow_tracking_uri
            opened_early = "mlflow" in modules and mlflow_store_ready(uri)
            if opened_early:
                kernel.queue(kernel_call(_open_mlflow_stores, uri))
            params = self._params.result()  # raises RunCalledOff when the preflight refused the input
            if "mlflow" in modules and not opened_early:  # the preflight has created the store: open it now
                kernel.queue(kernel_call(_open_mlflow_stores, uri))
            for i, name in enumerate(self.notebooks):
                if self._stopping.is_set():
                    raise RunInterrupted(self.current)
                self.current = name
                if i:
                    kernel.queue(RESET_CODE)
                execute_notebook(self.settings, name, params, self.out_dir, kernel.manager)

    def run(self, params: dict) -> None:
        """Execute every notebook with `params`; raise the first failure (`NotebookFailed`), or `RunInterrupted`."""
        self._params.set_result(params)
        try:
            self._done.result()
        except KeyboardInterrupt:
            self._interrupt()
            raise RunInterrupted(self.current) from None

    def _interrupt(self, grace_s: float = 10.0) -> None:
        """Stop the notebooks and wait until they have: interrupt the kernel's cell (as Jupyter's stop button does,
        again every second, since an interrupt that lands between two cells is ignored); if the notebook has not
        unwound within `grace_s`, or Ctrl-C comes again, kill the kernel. Nothing in a notebook needs a clean end:
        the run is marked KILLED, and a trial left RUNNING is failed by the study's heartbeat."""
        from concurrent.futures import TimeoutError as FutureTimeout

        from jupyter_core.utils import run_sync

        self._stopping.set()
        kernel = self._kernel
        if kernel is None:  # still starting: its thread stops before the first notebook
            return
        log.warning("interrupted: stopping %s (Ctrl-C again to kill its kernel)", self.current or "the kernel")
        deadline = time.monotonic() + grace_s
        try:
            while time.monotonic() < deadline:
                try:
                    run_sync(kernel.manager.interrupt_kernel)()
                except Exception as e:  # a kernel already gone has nothing left to stop
                    log.debug("interrupting the kernel: %r", e)
                try:
                    self._done.exception(timeout=1.0)
                    return
                except FutureTimeout:
                    continue
        except KeyboardInterrupt:
            pass
        log.warning("killing the kernel of %s", self.current)
        try:
            run_sync(kernel.manager.shutdown_kernel)(now=True)
        except Exception as e:
            log.debug("killing the kernel: %r", e)
        try:
            self._done.exception(timeout=grace_s)  # papermill notices the dead kernel
        except (FutureTimeout, KeyboardInterrupt):
            pass

    def __enter__(self) -> NotebookRun:
        return self

    def __exit__(self, *exc) -> None:
        if not self._params.done():
            self._params.set_exception(RunCalledOff("the run stopped before its notebooks"))
        self._pool.shutdown(wait=exc[0] is None)  # an error is reported at once; a started kernel stops behind it
