"""The batch run end to end: papermill over the notebooks, a registered champion with lineage, the gate, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

import mlflow
import pytest
from conftest import PROJECT_DIR, REAL_TRAIN, isolated_env, needs_real_data, run_pipeline
from mlflow.tracking import MlflowClient

from nbs_lib.champion import champion_version
from nbs_lib.config import configure_mlflow, get_settings, load_spec
from nbs_lib.registry import register_with_gate

NOTEBOOKS = ["03_eda.ipynb", "04_processing.ipynb", "05_tuning.ipynb", "07_registry.ipynb"]


def tree_state(*folders: str | Path) -> dict[str, str]:
    """sha256 of every file under `folders`: what 'left untouched' is checked against."""
    out = {}
    for folder in map(Path, folders):
        for p in sorted(folder.rglob("*")) if folder.exists() else []:
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def champion(env: dict[str, str], name: str = "obesity"):
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return champion_version(MlflowClient(), name, "champion")


def project_state(env: dict[str, str]) -> tuple:
    champ = champion(env)
    return (str(champ.version) if champ else None,
            tree_state(Path(env["DATA_DIR"]) / "raw", env["REPORTS_DIR"]))


def test_pipeline_registers_a_champion_with_lineage_and_gate_tags(trained_project):
    champ = champion(trained_project)
    assert champ is not None and str(champ.version) == "1"
    tags = champ.tags
    spec_hash = json.loads(Path(trained_project["REPORTS_DIR"], "notebooks", "run_summary.json").read_text())["lineage"]["lineage.spec_sha256"]
    raw_files = list((Path(trained_project["DATA_DIR"]) / "raw").iterdir())
    assert len(raw_files) == 1
    raw = raw_files[0]
    assert tags["lineage.data_sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert raw.name == f"synthetic-obesity-{tags['lineage.data_sha256'][:12]}.csv"
    assert tags["lineage.spec_sha256"] == spec_hash and len(spec_hash) == 64
    assert tags["lineage.profile"] == "smoke"
    assert tags["lineage.git_commit"] != ""
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.metric"] == "accuracy"
    assert tags["gate.champion_score"] == ""  # there was no champion to beat
    assert float(tags["gate.challenger_score"]) > 0.6


def test_raw_copy_is_read_only(trained_project):
    raw = next((Path(trained_project["DATA_DIR"]) / "raw").iterdir())
    assert stat.S_IMODE(raw.stat().st_mode) & 0o222 == 0


def test_run_logs_executed_notebooks_summary_and_reference(trained_project):
    champ = champion(trained_project)
    client = MlflowClient()
    top = {a.path for a in client.list_artifacts(champ.run_id)}
    assert {"notebooks", "run_summary.json", "reference"} <= top
    logged = [Path(a.path).name for a in client.list_artifacts(champ.run_id, "notebooks")]
    assert sorted(n for n in logged if n.endswith(".ipynb")) == NOTEBOOKS
    pages = sorted(Path(a.path).name for a in client.list_artifacts(champ.run_id, "notebooks/html"))
    assert pages == [n.replace(".ipynb", ".html") for n in NOTEBOOKS]  # the MLflow UI opens these
    page = Path(mlflow.artifacts.download_artifacts(run_id=champ.run_id, artifact_path="notebooks/html/07_registry.html"))
    html = page.read_text()
    assert "data:image/png;base64" in html and not re.findall(r"""<(?:script|link)[^>]+(?:src|href)=["']https?://""", html)
    assert not re.findall(r"cdnjs|unpkg|jsdelivr|googleapis|import\(\"https?:", html)  # opens offline as it is
    assert sorted(Path(a.path).name for a in client.list_artifacts(champ.run_id, "reference")) == \
        ["train.parquet", "typical_record.json"]   # the drift reference, and the API's example
    run = client.get_run(champ.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["holdout_accuracy"] == pytest.approx(float(champ.tags["gate.challenger_score"]), abs=1e-6)


def test_executed_notebooks_land_in_reports_with_outputs(trained_project):
    out = Path(trained_project["REPORTS_DIR"]) / "notebooks"
    assert sorted(p.name for p in out.glob("*.ipynb")) == NOTEBOOKS
    eda = json.loads((out / "03_eda.ipynb").read_text())
    images = [o for c in eda["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # class balance, distributions, category mix, correlations (seaborn plots are kept)
    params = [c for c in eda["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "data/raw" in "".join(params[0]["source"]).replace(os.sep, "/")


def test_executed_notebooks_read_cleanly_no_stderr_or_traceback(trained_project):
    """What a data scientist reads: each notebook ran in its own kernel from execution count 1, and no cell shows a
    stderr block (library logs, warnings) or an error."""
    for name in NOTEBOOKS:
        nb = json.loads((Path(trained_project["REPORTS_DIR"]) / "notebooks" / name).read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), name
        noise = [(i, o.get("text", o.get("ename", ""))[:200]) for i, c in enumerate(code) for o in c.get("outputs", [])
                 if o.get("name") == "stderr" or o["output_type"] == "error"]
        assert not noise, (name, noise)


def _notebooks(folder: Path, cells: dict[str, list[str]]) -> tuple[str, ...]:
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    for name, sources in cells.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / name)
    return tuple(cells)


def test_each_notebook_runs_in_a_fresh_kernel_of_its_own(tmp_path):
    """Stock papermill, one kernel per notebook: the second notebook shares no variable, environment change or
    process with the first; only files hand anything on (`Products`)."""
    from src.pipeline import execute_notebooks

    first = ["import os\nleak = 1\nos.environ['LEAK'] = '1'\nopen('first.pid', 'w').write(str(os.getpid()))"]
    second = ["import os\nassert 'leak' not in globals() and 'LEAK' not in os.environ\n"
              "assert open('first.pid').read() != str(os.getpid()), 'same kernel process'"]
    names = _notebooks(tmp_path / "notebooks", {"a.ipynb": first, "b.ipynb": second})
    (tmp_path / "out").mkdir()
    execute_notebooks(get_settings(project_dir=tmp_path), {}, tmp_path / "out", names)
    assert [c["execution_count"] for c in json.loads((tmp_path / "out" / "b.ipynb").read_text())["cells"]] == [1]


def test_a_failing_notebook_stops_the_notebooks_after_it(tmp_path):
    from src.pipeline import NotebookFailed, execute_notebooks

    names = _notebooks(tmp_path / "notebooks", {"a.ipynb": ["1 / 0"], "b.ipynb": ["open('ran', 'w')"]})
    (tmp_path / "out").mkdir()
    with pytest.raises(NotebookFailed, match=r"Notebook a.ipynb failed in cell 1: ZeroDivisionError"):
        execute_notebooks(get_settings(project_dir=tmp_path), {}, tmp_path / "out", names)
    assert not (tmp_path / "out" / "b.ipynb").exists() and not (tmp_path / "notebooks" / "ran").exists()


def test_trials_are_nested_mlflow_runs_with_cv_metrics(trained_project):
    champ = champion(trained_project)
    client = MlflowClient()
    parent = client.get_run(champ.run_id)
    trials = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{champ.run_id}'")
    assert len(trials) == 6  # the smoke profile's n_trials
    complete = [t for t in trials if t.data.tags.get("optuna.state") == "COMPLETE"]
    assert complete and all("cv_accuracy_mean" in t.data.metrics and "model" in t.data.params for t in complete)
    assert {t.data.params["model"] for t in trials} >= {"lightgbm"}


def test_worse_challenger_does_not_move_the_champion(project_env):
    import pandas as pd
    from sklearn.dummy import DummyClassifier

    from nbs_lib.processing import features_target

    settings = get_settings()
    spec = load_spec("obesity", PROJECT_DIR)
    before = champion(project_env)
    run_id = before.run_id
    holdout = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reference/train.parquet")).head(400)
    X, y = features_target(holdout, spec)
    dummy = DummyClassifier(strategy="most_frequent").fit(X, y)
    exp_id = configure_mlflow(settings, spec)  # the spec's experiment keeps artifacts in the temporary store, not ./mlruns
    with mlflow.start_run(experiment_id=exp_id, run_name="worse-challenger") as run:
        result = register_with_gate(dummy, holdout, spec, settings, {"lineage.profile": "test"}, run.info.run_id)
    assert result.promoted is False
    assert result.champion_version == str(before.version)
    assert result.challenger_score < result.champion_score
    after = champion(project_env)
    assert str(after.version) == str(before.version)
    rejected = MlflowClient().get_model_version("obesity", result.version)
    assert rejected.tags["gate.decision"] == "rejected"
    assert float(rejected.tags["gate.champion_score"]) == pytest.approx(result.champion_score, abs=1e-6)


# --- bad input: a clear paragraph, a non-zero exit, and nothing changed ------------------------------------------

def _broken_spec(tmp_path: Path) -> Path:
    text = (PROJECT_DIR / "specs" / "obesity.yaml").read_text().replace("BMI: Weight / Height ** 2", "BMI: Weight / Heigth ** 2")
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, extra_env, code, message", [
    ("missing DATA", {"DATA": "/nonexistent/obesity.csv"}, 2, "DATA file /nonexistent/obesity.csv does not exist"),
    ("unknown SPEC", {"SPEC": "specs/nope.yaml"}, 2, "Unknown SPEC 'specs/nope.yaml'"),
    ("bad PROFILE", {"PROFILE": "fast"}, 2, "PROFILE='fast'"),
    ("CSV without target", {"DATA": "no_target"}, 2, "has no target column 'NObeyesdad'"),
    ("MLflow server down", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, 2, "does not answer"),
    ("Optuna database down", {"OPTUNA_STORAGE": "postgresql+psycopg2://mlops:s3cret@127.0.0.1:9/optuna"}, 2,
     "The Optuna storage at OPTUNA_STORAGE=postgresql+psycopg2://mlops:***@127.0.0.1:9/optuna does not answer"),
    ("damaged MLflow store", {"MLFLOW_TRACKING_URI": "damaged"}, 2, "mlflow.db is not an SQLite database"),
    ("damaged Optuna store", {"OPTUNA_STORAGE": "damaged"}, 2, "optuna.db is not an SQLite database"),
    ("notebook fails", {"SPEC": "broken"}, 1, "Notebook 03_eda.ipynb failed in cell"),
])
def test_bad_input_fails_clearly_and_changes_nothing(trained_project, tmp_path, case, extra_env, code, message):

    env = dict(trained_project)
    if extra_env.get("DATA") == "no_target":
        from nbs_lib.data import generate_synthetic
        path = tmp_path / "no_target.csv"
        generate_synthetic(load_spec("obesity", PROJECT_DIR), rows=200).drop(columns="NObeyesdad").to_csv(path, index=False)
        extra_env = {"DATA": str(path)}
    if extra_env.get("SPEC") == "broken":
        extra_env = {"SPEC": str(_broken_spec(tmp_path))}
    for setting, value in list(extra_env.items()):
        if value == "damaged":  # a store file overwritten by something else
            damaged = tmp_path / ("mlflow.db" if setting == "MLFLOW_TRACKING_URI" else "optuna.db")
            damaged.write_bytes(bytes(range(256)) * 40)
            extra_env[setting] = f"sqlite:///{damaged}"
    before = project_state(env)
    proc = run_pipeline({**env, **extra_env})
    assert proc.returncode == code, proc.stderr[-3000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert project_state(env) == before
    for damaged in tmp_path.glob("*.db"):
        assert damaged.read_bytes() == bytes(range(256)) * 40  # refused, not repaired or replaced


def test_pipeline_trains_a_regression_spec_without_code_change(tmp_path):
    env = isolated_env(tmp_path) | {"SPEC": "specs/insurance.yaml"}
    proc = run_pipeline(env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    champ = champion(env, "insurance")
    assert champ is not None
    assert champ.tags["gate.metric"] == "rmse"
    model = mlflow.pyfunc.load_model("models:/insurance@champion")
    from nbs_lib.data import generate_synthetic
    rows = generate_synthetic(load_spec("insurance", PROJECT_DIR), rows=50, seed=1)
    preds = model.predict(rows.drop(columns="charges"))
    assert preds.dtype.kind == "f" and len(preds) == 50
    rmse = float(((preds - rows.charges) ** 2).mean() ** 0.5)
    assert rmse < 0.5 * float(rows.charges.std())  # far better than predicting the mean


@needs_real_data
def test_pipeline_on_real_training_data_reaches_target_accuracy(tmp_path):
    env = isolated_env(tmp_path) | {"DATA": str(REAL_TRAIN)}
    proc = run_pipeline(env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    champ = champion(env)
    assert float(champ.tags["gate.challenger_score"]) >= 0.86
    assert champ.tags["lineage.data_sha256"] == hashlib.sha256(REAL_TRAIN.read_bytes()).hexdigest()


def test_a_kernel_that_dies_is_a_clear_notebook_failure(tmp_path):
    from src.pipeline import NotebookFailed, execute_notebook

    _notebooks(tmp_path / "notebooks", {"dies.ipynb": ["import os\nos._exit(1)  # as the OOM killer would"]})
    settings = get_settings(project_dir=tmp_path)
    with pytest.raises(NotebookFailed, match=r"Notebook dies.ipynb stopped: DeadKernelError: .* Its kernel died"):
        execute_notebook(settings, "dies.ipynb", {}, tmp_path)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"], ids=["Ctrl-C", "docker stop"])
def test_ctrl_c_stops_the_run_at_once_and_promotes_nothing(signum, trained_project, tmp_path):
    """Ctrl-C reaches the pipeline, not its kernel (jupyter_client starts kernels in their own session): the
    pipeline interrupts the running notebook, starts no other, marks the run KILLED and exits 130 within seconds.
    SIGTERM (`docker stop`, sent to the command alone) does the same and exits 143."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    before = project_state(trained_project)
    log_path = tmp_path / "pipeline.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "src.pipeline"], cwd=PROJECT_DIR, start_new_session=True,
                                env={**os.environ, **trained_project}, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "running 05_tuning.ipynb" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # inside the search
        kernels = psutil.Process(proc.pid).children(recursive=True)
        if signum == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends its foreground process group on Ctrl-C
        else:
            proc.send_signal(signal.SIGTERM)  # what docker stop sends the container's command
        sent = time.monotonic()
        rc = proc.wait(timeout=120)
    stopped_in = time.monotonic() - sent
    out = log_path.read_text()
    assert rc == 128 + getattr(signal, signum), out[-3000:]
    assert stopped_in < 30, f"took {stopped_in:.0f} s to stop"
    said = ("SIGTERM: " if signum == "SIGTERM" else "\n") + "interrupted while 05_tuning.ipynb ran"
    assert said in out and "Nothing was promoted" in out, out[-3000:]
    assert "05_tuning.ipynb done" not in out and "running 07_registry.ipynb" not in out
    assert kernels and not psutil.wait_procs(kernels, timeout=10)[1]  # no kernel outlives the run
    assert project_state(trained_project) == before  # champion, data/raw and reports/ as they were
    runs = mlflow.search_runs(experiment_names=["obesity"], filter_string="tags.mlflow.parentRunId IS NULL",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    assert runs[0].info.status == "KILLED"


def test_an_interrupted_run_names_the_version_it_promoted_if_it_got_that_far(project_env):
    from src.pipeline import RunInterrupted, interrupted_message, promoted_by

    settings = get_settings()
    spec = load_spec(settings.spec, settings.project_dir)
    champ = champion(project_env)
    assert promoted_by(settings, spec, champ.run_id) == str(champ.version)  # the run that set the alias
    assert promoted_by(settings, spec, "a-run-that-registered-nothing") is None
    assert f"moved the champion alias to v{champ.version}" in interrupted_message(
        RunInterrupted("07_registry.ipynb", str(champ.version)))
