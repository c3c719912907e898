"""The docker-compose stack, checked without an engine: services, health checks, ports and secrets from .env, volumes,
the shared Optuna study, the images' base, user and pins, and the scheduler's cron schedules.

`make test-compose` runs the same stack for real; these tests keep the files honest where no engine runs (CI).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

PROJECT_DIR = Path(__file__).resolve().parents[1]
COMPOSE_FILE = PROJECT_DIR / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT_DIR / ".env.example"
SERVICES = {"postgres", "mlflow", "jupyter", "pipeline", "tuner", "api", "scheduler"}
SECRETS = {"POSTGRES_PASSWORD", "JUPYTER_TOKEN", "API_KEY"}
# Keys of a service that docker-compose 1.29 understands and this stack uses; Compose v2 reads all of them.
SERVICE_KEYS_1_29 = {"build", "image", "command", "entrypoint", "environment", "ports", "volumes", "depends_on",
                     "healthcheck", "restart", "user", "working_dir", "profiles", "networks", "expose",
                     "stop_grace_period"}
VAR = re.compile(r"\$\{(?P<name>[A-Za-z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them: comments and blank lines skipped, surrounding quotes removed."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"').strip("'")
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$ substitution."""
    def sub(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        value = env.get(name)
        if op == ":?" and not value or op == "?" and value is None:
            raise KeyError(f"{name}: {arg}")
        if op == ":-" and not value or op == "-" and value is None:
            return arg
        return value or ""
    return VAR.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def resolve(node, env: dict[str, str]):
    """The compose document with every string interpolated."""
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(e.split("=", 1) for e in env) if isinstance(env, list) else {k: str(v) for k, v in env.items()}


def dockerfile(service: dict) -> str:
    return (PROJECT_DIR / service["build"].get("dockerfile", "Dockerfile")).read_text()


def instructions(text: str, name: str) -> list[str]:
    """The arguments of every `name` instruction of a Dockerfile (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.upper().startswith(name.upper() + " ")]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def services(raw, env_example) -> dict[str, dict]:
    return resolve(raw, env_example)["services"]


def test_stack_has_the_seven_services(services):
    assert set(services) == SERVICES


def test_compose_file_uses_only_what_docker_compose_1_29_reads(raw):
    assert {k for k in raw if not k.startswith("x-")} == {"services", "volumes"}  # no `version`, no `name`
    for name, svc in raw["services"].items():
        assert set(svc) <= SERVICE_KEYS_1_29, f"{name}: {set(svc) - SERVICE_KEYS_1_29}"
        assert "container_name" not in svc and "deploy" not in svc
        conditions = {d["condition"] for d in svc.get("depends_on", {}).values()}
        assert conditions <= {"service_started", "service_healthy", "service_completed_successfully"}
        assert svc.get("restart") in {"no", "unless-stopped", "on-failure", "always"}, name


def test_images_build_on_python_slim_and_postgres_16_only(services):
    assert services["postgres"]["image"] == "postgres:16"
    built = {n: s for n, s in services.items() if "build" in s}
    assert set(built) == SERVICES - {"postgres"}
    for name, svc in built.items():
        assert instructions(dockerfile(svc), "FROM") == ["python:3.11-slim"], name
        assert "USER" in dockerfile(svc) and "USER root" not in dockerfile(svc), f"{name} must run as a non-root user"
    dev = {n for n, s in built.items() if s["build"]["dockerfile"] == "dev.Dockerfile"}
    assert dev == {"jupyter", "pipeline", "tuner", "scheduler"}
    assert len({s["image"] for n, s in built.items() if n in dev}) == 1  # one dev image, built once and shared


def test_long_running_services_have_health_checks(services):
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("mlflow", "api"):  # in their images
        (check,) = instructions(dockerfile(services[name]), "HEALTHCHECK")
        assert "/health" in check, name
    assert "8888/api" in " ".join(services["jupyter"]["healthcheck"]["test"])
    for name in ("postgres", "mlflow", "api", "jupyter", "scheduler"):
        assert services[name]["restart"] == "unless-stopped", name


def test_published_ports_come_from_env_and_only_for_ui_and_api(raw, env_example):
    expected = {"mlflow": ("MLFLOW_PORT", "5000"), "api": ("API_PORT", "8000"), "jupyter": ("JUPYTER_PORT", "8888")}
    published = {n: s["ports"] for n, s in raw["services"].items() if s.get("ports")}
    assert set(published) == set(expected)  # postgres stays internal; tuners publish nothing, so they scale
    for name, (var, container_port) in expected.items():
        (mapping,) = published[name]
        assert mapping == f"${{BIND_ADDRESS:-127.0.0.1}}:${{{var}:-{container_port}}}:{container_port}"
        assert var in env_example


def test_secrets_have_no_default_and_are_documented_in_env_example(raw, env_example):
    text = COMPOSE_FILE.read_text()
    required = {m["name"] for m in VAR.finditer(text) if m["op"] == ":?"}
    assert required == SECRETS
    assert not re.search(r"\$\{(POSTGRES_PASSWORD|JUPYTER_TOKEN|API_KEY):?-", text)
    assert SECRETS <= set(env_example)
    without_password = {k: v for k, v in env_example.items() if k != "POSTGRES_PASSWORD"}
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD: set POSTGRES_PASSWORD in .env"):
        resolve(raw, without_password)


def test_every_variable_of_the_compose_file_is_in_env_example(env_example):
    used = {m["name"] for m in VAR.finditer(COMPOSE_FILE.read_text())}
    assert used - set(env_example) == set()


def test_named_volumes_are_declared_and_hold_the_stores(raw, services):
    declared = set(raw["volumes"])
    mounts = {n: dict(v.split(":")[:2] for v in s.get("volumes", [])) for n, s in services.items()}
    named = {src for m in mounts.values() for src in m if not src.startswith((".", "/"))}
    assert named == declared
    assert mounts["postgres"] == {"postgres-data": "/var/lib/postgresql/data"}
    assert mounts["mlflow"] == {"mlflow-artifacts": "/mlartifacts"}
    (cmd,) = instructions(dockerfile(services["mlflow"]), "CMD")
    assert "--serve-artifacts" in cmd and "--artifacts-destination /mlartifacts" in cmd
    assert mounts["jupyter"] == {".": "/app"}  # the repo, mounted
    # the api appends to the prediction log and serves monitoring reports the scheduler's drift check writes
    for name in ("api", "scheduler", "pipeline"):
        assert mounts[name] == {"data": "/app/data", "reports": "/app/reports"}, name
        assert environment(services[name])["PREDICTION_LOG"].startswith("/app/data/")


def test_tuners_and_pipeline_share_one_study_on_postgres(services, env_example):
    workers = ("tuner", "pipeline", "scheduler", "jupyter")
    envs = {n: environment(services[n]) for n in workers}
    for key in ("OPTUNA_STORAGE", "OPTUNA_STUDY", "SPEC", "PROFILE", "DATA"):
        assert len({e[key] for e in envs.values()}) == 1, key
    storage = envs["tuner"]["OPTUNA_STORAGE"]
    # explicit driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
    assert storage == (f"postgresql+psycopg2://{env_example['POSTGRES_USER']}:{env_example['POSTGRES_PASSWORD']}"
                       f"@postgres:5432/{env_example['OPTUNA_DB']}")
    assert env_example["OPTUNA_DB"] != env_example["MLFLOW_DB"]  # Optuna and MLflow both keep an alembic_version table
    assert envs["tuner"]["OPTUNA_STUDY"] == env_example["OPTUNA_STUDY"]
    tuner = services["tuner"]
    assert tuner["command"] == ["python", "-m", "src.tune", "--target-trials", envs["tuner"]["N_TRIALS"]]
    assert tuner["restart"] == "on-failure"
    assert envs["pipeline"]["N_TRIALS"] == "0"  # the tuners search; the pipeline registers the study's best trial
    assert services["pipeline"]["depends_on"]["tuner"] == {"condition": "service_completed_successfully"}
    assert services["pipeline"]["restart"] == "no"


def test_python_services_talk_to_the_mlflow_server_and_the_api_gets_no_database(services):
    for name in SERVICES - {"postgres", "mlflow"}:
        assert environment(services[name])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
    assert "OPTUNA_STORAGE" not in environment(services["api"])
    # the api must come up (and answer 503) while MLflow is down, so it waits for nothing but the start
    assert services["api"]["depends_on"] == {"mlflow": {"condition": "service_started"}}
    backend = environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith("@postgres:5432/mlflow")
    assert environment(services["postgres"])["POSTGRES_DB"] == "mlflow"


def test_environment_names_are_settings_the_code_reads(services):
    from nbs_lib.config import Settings
    from nbs_lib.drift import DriftSettings
    from src.serving.settings import ServingSettings

    fields = {f.upper() for f in Settings.model_fields} | {f"DRIFT_{f.upper()}" for f in DriftSettings.model_fields}
    read_by = {"api": {f.upper() for f in ServingSettings.model_fields} | {"WEB_CONCURRENCY"},  # uvicorn's workers
               "scheduler": {"PIPELINE_SCHEDULE", "DRIFT_SCHEDULE", "DRIFT_COMMAND", "SCHEDULER_STOP_GRACE_S"},
               "jupyter": {"JUPYTER_TOKEN", "HOME"}}
    for name in SERVICES - {"postgres", "mlflow"}:
        unknown = set(environment(services[name])) - fields - read_by.get(name, set())
        assert unknown == set(), f"{name}: nothing reads {unknown}"


def test_serving_image_installs_requirements_txt_only():
    text = (PROJECT_DIR / "Dockerfile").read_text()
    runs = " ".join(instructions(text, "RUN"))
    # requirements_dev.txt only as constraints, without its nested `-r` (which pip would install)
    assert 'grep -v "^-r" requirements_dev.txt > constraints.txt && pip install -r requirements.txt -c constraints.txt' in runs
    assert "-r requirements_dev.txt" not in runs and "-c requirements_dev.txt" not in runs
    assert "pip install --no-deps ." in runs
    assert "libgomp1" in runs  # LightGBM champions cannot load without OpenMP, which the slim image lacks
    assert instructions(text, "USER") == ["app"]
    assert "$WEB_CONCURRENCY" in instructions(text, "CMD")[0] and "src.serving.app:app" in instructions(text, "CMD")[0]


def test_dev_image_serves_jupyterlab_with_requirements_dev():
    text = (PROJECT_DIR / "dev.Dockerfile").read_text()
    assert "pip install -r requirements_dev.txt" in " ".join(instructions(text, "RUN"))
    assert "libgomp1" in " ".join(instructions(text, "RUN"))  # the tuners and pipeline train LightGBM
    assert instructions(text, "EXPOSE") == ["8888"] and instructions(text, "USER") == ["app"]
    assert "--port=8888" in instructions(text, "CMD")[0]


def test_mlflow_image_pins_equal_requirements_txt():
    pins = dict(line.split("==") for line in (PROJECT_DIR / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    runs = " ".join(instructions((PROJECT_DIR / "docker" / "mlflow.Dockerfile").read_text(), "RUN"))
    assert f"pip install mlflow=={pins['mlflow']} psycopg2-binary=={pins['psycopg2-binary']} -c" in runs
    assert "-r " not in runs.replace('grep -v "^-r"', "")  # nothing else of requirements*.txt gets installed


def test_build_context_leaves_out_secrets_and_run_products():
    ignored = set((PROJECT_DIR / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "data", "models", "reports"} <= ignored
    assert ".env" in (PROJECT_DIR / ".gitignore").read_text().split()


def compose_cli() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose` (v1), whichever is installed; neither needs a running engine."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_cli() is None, reason="no compose CLI installed (the structural tests above still ran)")
def test_compose_cli_accepts_the_file_and_refuses_a_missing_secret(tmp_path, env_example):
    cli = compose_cli()
    clean_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    ok = subprocess.run([*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "config", "-q"],
                        capture_output=True, text=True, env=clean_env)
    assert ok.returncode == 0, ok.stderr
    partial = tmp_path / "partial.env"
    partial.write_text("".join(f"{k}={v}\n" for k, v in env_example.items() if k != "API_KEY"))
    missing = subprocess.run([*cli, "--env-file", str(partial), "-f", str(COMPOSE_FILE), "config", "-q"],
                             capture_output=True, text=True, env=clean_env)
    assert missing.returncode != 0 and "set API_KEY in .env" in missing.stderr + missing.stdout


@pytest.fixture(scope="module")
def scheduler():
    spec = importlib.util.spec_from_file_location("compose_scheduler", PROJECT_DIR / "docker" / "scheduler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_compose_schedules_run_the_pipeline_weekly_and_the_drift_check_daily(scheduler, services):
    env = environment(services["scheduler"])
    jobs = {j.name: j for j in scheduler.jobs_from_env(env)}
    monday = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    first = jobs["pipeline"].cron.next_after(monday)
    assert first == datetime(2026, 11, 29, 3, 0, tzinfo=UTC)  # Sunday 03:00
    assert jobs["pipeline"].cron.next_after(first) - first == (datetime(2026, 12, 6) - datetime(2026, 11, 29))
    drift = jobs["drift"].cron.next_after(monday)
    assert drift == datetime(2026, 11, 24, 2, 30, tzinfo=UTC)
    assert (jobs["drift"].cron.next_after(drift) - drift).days == 1
    assert jobs["pipeline"].command == ["python", "-m", "src.pipeline"]
    assert jobs["drift"].command == ["python", "-m", "src.monitoring.monitor"]  # current: the API's prediction log


def test_cron_fields_ranges_steps_lists_and_either_day(scheduler):
    cron = scheduler.Cron.parse("*/20 9-10 * * 1-5")
    friday_evening = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
    assert cron.next_after(friday_evening) == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # Monday
    assert sorted(cron.fields[0]) == [0, 20, 40]
    # day of month and day of week both set: either one fires, as in cron
    either = scheduler.Cron.parse("0 0 1 * 7")
    assert either.matches(datetime(2026, 12, 1, 0, 0)) and either.matches(datetime(2026, 11, 29, 0, 0))
    assert not either.matches(datetime(2026, 11, 30, 0, 0))


def test_bad_schedule_is_refused_with_the_field_named(scheduler):
    with pytest.raises(scheduler.ScheduleError, match="cron hour field '25' is outside 0-23"):
        scheduler.Cron.parse("0 25 * * *")
    with pytest.raises(scheduler.ScheduleError, match="needs 5 cron fields"):
        scheduler.Cron.parse("weekly")
    with pytest.raises(scheduler.ScheduleError, match="never fires"):
        scheduler.Cron.parse("0 0 31 2 *").next_after(datetime(2026, 1, 1))


def test_stop_grace_comes_from_env_and_a_bad_value_is_refused_at_start(scheduler):
    assert scheduler.stop_grace_from_env({}) == scheduler.STOP_GRACE_S
    assert scheduler.stop_grace_from_env({"SCHEDULER_STOP_GRACE_S": " "}) == scheduler.STOP_GRACE_S
    assert scheduler.stop_grace_from_env({"SCHEDULER_STOP_GRACE_S": "12.5"}) == 12.5
    for bad in ("25s", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match=rf"SCHEDULER_STOP_GRACE_S='{bad}' is not a number of seconds >= 0"):
            scheduler.stop_grace_from_env({"SCHEDULER_STOP_GRACE_S": bad})
    done = subprocess.run([sys.executable, str(PROJECT_DIR / "docker" / "scheduler.py"), "--run-now", "drift"],
                          env={**os.environ, "SCHEDULER_STOP_GRACE_S": "25s"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: SCHEDULER_STOP_GRACE_S='25s' is not a number of seconds >= 0; set it in .env")


def test_empty_schedule_disables_a_job_and_commands_can_be_replaced(scheduler):
    jobs = scheduler.jobs_from_env({"DRIFT_SCHEDULE": "off", "PIPELINE_COMMAND": "make pipeline PROFILE=full"})
    assert [(j.name, j.command) for j in jobs] == [("pipeline", ["make", "pipeline", "PROFILE=full"])]


# A job that records the SIGTERM it gets and exits as the pipeline does (143), or one that ignores SIGTERM.
STOPPABLE_JOB = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def on_sigterm(*_):
    out.write_text("SIGTERM")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_sigterm if sys.argv[2] == "stops" else signal.SIG_IGN)
out.write_text("started")
time.sleep(120)
"""


def test_docker_stop_passes_sigterm_to_the_running_job_and_waits_for_it(tmp_path):
    """The scheduler is PID 1 in its container, where SIGTERM would be ignored until Docker's SIGKILL cut a running
    pipeline off mid-write; it passes the signal on and exits with the job's status."""
    job = tmp_path / "job.py"
    job.write_text(STOPPABLE_JOB)
    marker = tmp_path / "job.state"
    env = {**os.environ, "PIPELINE_COMMAND": f"{sys.executable} {job} {marker} stops"}
    proc = subprocess.Popen([sys.executable, str(PROJECT_DIR / "docker" / "scheduler.py"), "--run-now", "pipeline"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert marker.read_text() == "SIGTERM"
    assert "pipeline stopped: exit 143" in out


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(scheduler, tmp_path):
    job = tmp_path / "job.py"
    job.write_text(STOPPABLE_JOB)
    marker = tmp_path / "job.state"
    stubborn = scheduler.Job("pipeline", scheduler.Cron.parse("* * * * *"), [])
    stubborn.proc = subprocess.Popen([sys.executable, str(job), str(marker), "ignores"])
    while not marker.exists():
        time.sleep(0.05)
    started = time.monotonic()
    scheduler.stop_jobs([stubborn], grace_s=1.0)
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert 1.0 <= time.monotonic() - started < 10
    assert marker.read_text() == "started"


def test_batch_services_get_time_to_stop_cleanly(services, scheduler):
    """docker stop waits `stop_grace_period` before SIGKILL: enough for the pipeline's 10 s kernel interrupt, and
    longer than the scheduler's own wait for its job."""
    for name in ("tuner", "pipeline", "scheduler"):
        period = services[name]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", period) and int(period[:-1]) >= 30, (name, period)
    period = int(services["scheduler"]["stop_grace_period"][:-1])
    assert scheduler.STOP_GRACE_S < period
    assert float(environment(services["scheduler"])["SCHEDULER_STOP_GRACE_S"]) < period  # as set through .env
