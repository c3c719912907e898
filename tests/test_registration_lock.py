"""Concurrent registrations (scheduler, retrain on drift, `make pipeline`) on one SQLite registry take turns: the
better model ends as champion and every version's gate tags name the champion it was really judged against.

The interleaving is forced: the first registration pauses between reading the champion and moving the alias until
the second one has finished (or, once registration is serialised, for `PAUSE_S` while the second waits its turn).
"""

from __future__ import annotations

import threading
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import nbs_lib.registry as registry
from nbs_lib.config import get_settings, load_spec
from nbs_lib.data import generate_synthetic
from nbs_lib.processing import clean_frame, split_holdout

PROJECT_DIR = Path(__file__).resolve().parents[1]
PAUSE_S = 3.0   # how long the paused registration waits for the other: far longer than its last MLflow writes take


@pytest.fixture(scope="module")
def models() -> dict:
    """The obesity spec, a holdout, and two small fitted models, one clearly better on that holdout."""
    spec = load_spec("specs/obesity.yaml", PROJECT_DIR)
    train, holdout = split_holdout(clean_frame(generate_synthetic(spec, rows=600, seed=0), spec), spec)
    better = registry.fit_final({"model": "logistic_regression", "C": 1.0}, train, spec)
    worse = registry.fit_final({"model": "logistic_regression", "C": 1e-4}, train, spec)
    scores = {k: registry.evaluate(m, holdout, spec)[spec.primary_metric] for k, m in (("better", better), ("worse", worse))}
    assert registry.beats(scores["better"], scores["worse"], spec.greater_is_better), scores
    return {"spec": spec, "holdout": holdout, "better": better, "worse": worse}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty SQLite registry under tmp_path, with the registered model created and one MLflow run per model."""
    uri = f"sqlite:///{tmp_path / 'models' / 'mlflow.db'}"
    for k, v in {"MODELS_DIR": str(tmp_path / "models"), "MLFLOW_TRACKING_URI": uri, "DATA_DIR": str(tmp_path / "data"),
                 "OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'models' / 'optuna.db'}", "REPORTS_DIR": str(tmp_path / "reports")}.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "models").mkdir()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("lock", (tmp_path / "artifacts").as_uri())
    runs = {}
    for who in ("better", "worse"):
        with mlflow.start_run(experiment_id=exp, run_name=who) as run:
            runs[who] = run.info.run_id
    client = MlflowClient()
    client.create_registered_model(load_spec("specs/obesity.yaml", PROJECT_DIR).model_name)
    return {"settings": get_settings(), "runs": runs, "client": client}


def register_concurrently(models: dict, store: dict, first: str, monkeypatch) -> dict[str, str]:
    """Register both models in two threads, `first` paused between reading the champion and moving the alias while
    the other registers; returns each model's version."""
    second = "worse" if first == "better" else "better"
    reached, second_scored, second_done = threading.Event(), threading.Event(), threading.Event()
    real_champion, real_evaluate = registry.champion_version, registry.evaluate

    def champion_version(client, name, alias):
        current = real_champion(client, name, alias)
        if threading.current_thread().name == first and not reached.is_set():
            reached.set()
            second_scored.wait(timeout=120)       # the other got as far as scoring itself (before any lock)
            second_done.wait(timeout=PAUSE_S)     # and finished, unless it waits for this one
        return current

    def evaluate(model, holdout, spec):
        out = real_evaluate(model, holdout, spec)
        if threading.current_thread().name == second:
            second_scored.set()
        return out

    monkeypatch.setattr(registry, "champion_version", champion_version)
    monkeypatch.setattr(registry, "evaluate", evaluate)
    versions, errors = {}, []

    def register(who: str) -> None:
        try:
            gate = registry.register_with_gate(models[who], models["holdout"], models["spec"], store["settings"], {},
                                               store["runs"][who])
            versions[who] = gate.version
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            if who == second:
                second_done.set()

    threads = {who: threading.Thread(target=register, args=(who,), name=who) for who in (first, second)}
    threads[first].start()
    assert reached.wait(timeout=120), "the first registration never read the champion"
    threads[second].start()
    for t in threads.values():
        t.join(timeout=300)
    assert not errors, errors
    return versions


def assert_consistent(client: MlflowClient, name: str, versions: dict[str, str]) -> None:
    """The better model is champion; exactly one registration found no champion and the other was judged against it."""
    champion = client.get_model_version_by_alias(name, "champion").version
    tags = {who: client.get_model_version(name, v).tags for who, v in versions.items()}
    first = [who for who, t in tags.items() if t["gate.champion_version"] == ""]
    assert (str(champion), len(first)) == (versions["better"], 1), (champion, versions, tags)
    later = "worse" if first == ["better"] else "better"
    assert tags[later]["gate.champion_version"] == versions[first[0]]
    assert tags[later]["gate.champion_score"] == tags[first[0]]["gate.challenger_score"]   # the same holdout
    assert tags["better"]["gate.decision"] == "promoted"
    assert tags["worse"]["gate.decision"] == ("promoted" if first == ["worse"] else "rejected")


@pytest.mark.parametrize("first", ["worse", "better"])
def test_concurrent_registrations_leave_the_better_model_champion_with_consistent_tags(models, store, first, monkeypatch):
    versions = register_concurrently(models, store, first, monkeypatch)
    assert_consistent(store["client"], models["spec"].model_name, versions)


def test_a_tracking_server_with_a_postgres_url_takes_the_advisory_lock(monkeypatch, tmp_path):
    taken = []
    monkeypatch.setattr(registry, "advisory_lock", lambda url, key, timeout_s: taken.append((url, key)) or _nothing())
    url = "postgresql+psycopg2://u:p@postgres:5432/optuna"
    with registry.registration_lock("http://mlflow:5000", "obesity", tmp_path, url):
        pass
    with registry.registration_lock(f"sqlite:///{tmp_path / 'mlflow.db'}", "obesity", tmp_path, url):
        pass   # a local store: the file lock, whatever OPTUNA_STORAGE says
    assert taken == [(url, registry.registry_lock_key("obesity"))]


def _nothing():
    from contextlib import nullcontext
    return nullcontext()



def test_two_runs_finishing_together_publish_one_runs_notebooks_not_a_mix(store, tmp_path, monkeypatch):
    import shutil
    import time
    from contextlib import suppress

    import nbformat

    import src.pipeline as pipeline

    real_copy, real_html, started = shutil.copy2, pipeline.notebooks_as_html, set()
    html_done, publishing = threading.Barrier(2, timeout=120), threading.Barrier(2, timeout=PAUSE_S)
    published = store["settings"].reports_dir / "notebooks"

    def notebooks_as_html(out_dir, html_dir):   # the step before publishing: both runs leave it together
        real_html(out_dir, html_dir)
        html_done.wait()

    def slow_copy(src, dst):   # "worse" starts publishing just after "better" and copies faster: unserialised, they mix
        who = threading.current_thread().name
        if Path(dst).parent != published:
            return real_copy(src, dst)
        if who not in started:
            started.add(who)
            with suppress(threading.BrokenBarrierError):   # serialised: the other waits for the lock, not here
                publishing.wait()
            time.sleep(0.05 if who == "worse" else 0)
        real_copy(src, dst)
        time.sleep(0.3 if who == "better" else 0)

    monkeypatch.setattr(pipeline, "notebooks_as_html", notebooks_as_html)
    monkeypatch.setattr(pipeline.shutil, "copy2", slow_copy)
    dirs = {}
    for who in ("better", "worse"):
        out, work = tmp_path / who / "notebooks", tmp_path / who / "work"
        out.mkdir(parents=True)
        work.mkdir()
        for name in ("03_eda", "04_processing", "05_tuning", "07_registry"):
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"{who} {name}")])
            nbformat.write(nb, out / f"{name}.ipynb")
        dirs[who] = (out, work)
    threads = [threading.Thread(target=pipeline.finish_run, name=who,
                                args=(store["settings"], store["runs"][who], *dirs[who], "FINISHED")) for who in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    authors = {nbformat.read(p, as_version=4).cells[0].source.split()[0] for p in published.glob("*.ipynb")}
    assert (len(list(published.glob("*.ipynb"))), len(authors)) == (4, 1)


CREATE_STORES = """
import sys
from nbs_lib.config import configure_mlflow, get_settings, load_spec
from nbs_lib.tuning import study_storage
root = sys.argv[1]
s = get_settings(project_dir=sys.argv[2], models_dir=f"{root}/models", data_dir=f"{root}/data", reports_dir=f"{root}/reports")
configure_mlflow(s, load_spec("obesity", s.project_dir))
study_storage(s)
"""


def test_pipelines_starting_together_on_a_new_local_store_all_get_it(tmp_path):
    """Two `make pipeline`s (or tuners) starting at once on a fresh machine: MLflow and Optuna create a new SQLite
    store's tables on first use, and unserialised creators raced (one failed: "expected to match one row")."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "MODELS_DIR")}
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_STORES, str(tmp_path), str(PROJECT_DIR)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()[-800:]) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
