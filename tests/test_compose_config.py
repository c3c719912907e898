"""The docker-compose stack, checked without an engine: services, health checks, ports and secrets from .env, volumes,
the shared Optuna study, the images' base, user and pins, and the scheduler's cron schedules.

`make test-compose` runs the same stack for real; these tests keep the files honest where no engine runs (CI).
"""

from __future__ import annotations

import configparser
import importlib.util
import json
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
MLFLOW_ENTRYPOINT = PROJECT_DIR / "docker" / "mlflow-entrypoint.sh"
ENV_EXAMPLE = PROJECT_DIR / ".env.example"
SERVICES = {"postgres", "mlflow", "jupyter", "pipeline", "tuner", "api", "scheduler"}
SECRETS = {"POSTGRES_PASSWORD", "JUPYTER_TOKEN", "API_KEY", "MLFLOW_PASSWORD", "MLFLOW_SECRET_KEY"}
# Keys of a service that docker-compose 1.29 understands and this stack uses; Compose v2 reads all of them.
SERVICE_KEYS_1_29 = {"build", "image", "command", "entrypoint", "environment", "ports", "volumes", "depends_on",
                     "healthcheck", "restart", "user", "working_dir", "profiles", "networks", "expose",
                     "stop_grace_period", "init", "cap_drop", "cap_add", "security_opt", "mem_limit", "read_only",
                     "tmpfs"}
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


def test_images_build_on_python_slim_and_postgres_16_only_and_can_be_pinned_by_digest(services, raw, env_example):
    assert services["postgres"]["image"] == "postgres:16"
    assert raw["services"]["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:16}"
    built = {n: s for n, s in services.items() if "build" in s}
    assert set(built) == SERVICES - {"postgres"}
    for name, svc in built.items():
        assert instructions(dockerfile(svc), "FROM") == ["${PYTHON_IMAGE}"], name
        assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile(svc), name   # a plain `docker build` gets the same
        assert svc["build"]["args"] == {"PYTHON_IMAGE": "python:3.11-slim"}, name
        assert "USER" in dockerfile(svc) and "USER root" not in dockerfile(svc), f"{name} must run as a non-root user"
    dev = {n for n, s in built.items() if s["build"]["dockerfile"] == "dev.Dockerfile"}
    assert dev == {"jupyter", "pipeline", "tuner", "scheduler"}
    assert len({s["image"] for n, s in built.items() if n in dev}) == 1  # one dev image, built once and shared
    # .env.example names both, with how to pin them by digest
    assert (env_example["PYTHON_IMAGE"], env_example["POSTGRES_IMAGE"]) == ("python:3.11-slim", "postgres:16")
    assert "@sha256:" in (PROJECT_DIR / ".env.example").read_text()


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
    assert not re.search(r"\$\{(POSTGRES_PASSWORD|JUPYTER_TOKEN|API_KEY|MLFLOW_PASSWORD|MLFLOW_SECRET_KEY):?-", text)
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
    assert json.loads(instructions(dockerfile(services["mlflow"]), "CMD")[0]) == ["sh", "/usr/local/bin/mlflow-entrypoint.sh"]
    assert "--serve-artifacts \\\n  --artifacts-destination /mlartifacts" in MLFLOW_ENTRYPOINT.read_text()
    assert mounts["jupyter"] == {".": "/app"}  # the repo, mounted
    # the api appends to the prediction log and serves monitoring reports the scheduler's drift check writes
    for name in ("api", "scheduler", "pipeline"):
        assert mounts[name] == {"data": "/app/data", "reports": "/app/reports"}, name
        assert environment(services[name])["PREDICTION_LOG"].startswith("/app/data/")


def test_the_api_takes_the_prediction_log_retention_from_env(raw, services):
    # the api prunes the log it appends to; unset in .env, Settings' default applies (an empty value is ignored)
    assert raw["services"]["api"]["environment"]["PREDICTION_LOG_RETENTION_DAYS"] == "${PREDICTION_LOG_RETENTION_DAYS:-}"
    assert "PREDICTION_LOG_RETENTION_DAYS" in environment(services["api"])


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
    from nbs_lib.config import (  # the one Settings and its two sections
        DriftSettings,
        ServingSettings,
        Settings,
    )

    fields = {f.upper() for f in Settings.model_fields} | {f"DRIFT_{f.upper()}" for f in DriftSettings.model_fields}
    fields |= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}   # read by MLflow's client in every service
    read_by = {"api": {f.upper() for f in ServingSettings.model_fields} | {"WEB_CONCURRENCY"},  # uvicorn's workers
               "scheduler": {"PIPELINE_SCHEDULE", "DRIFT_SCHEDULE", "DRIFT_COMMAND", "SCHEDULER_STOP_GRACE_S"},
               "jupyter": {"JUPYTER_TOKEN", "HOME", "JUPYTER_CONFIG_PATH", "JUPYTER_ALLOWED_HOSTS"}}
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
    # the launcher checks the settings (one line, before uvicorn starts any worker), then runs WEB_CONCURRENCY workers
    # sharing one folder for their metrics and reload signal
    assert json.loads(instructions(text, "CMD")[0]) == ["python", "-m", "src.serving", "--host", "0.0.0.0"]
    assert "WEB_CONCURRENCY=1" in " ".join(instructions(text, "ENV"))


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
    assert f"pip install mlflow=={pins['mlflow']} psycopg2-binary=={pins['psycopg2-binary']} Flask-WTF==" in runs
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


# ------------------------------------------------------------------------------------------- safe defaults -----

MAKE_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
REAL_PASSWORD = "s3cret-Pa55word-0123"


def placeholder_refusal(name: str) -> str:
    return (f"error: {name} is still the .env.example placeholder (change-me...): set {name} in .env to a random "
            f"URL-safe string, e.g. {MAKE_SECRET}")


def fake_bin(tmp_path: Path, *names: str) -> dict[str, str]:
    """An environment whose PATH finds stand-ins for `names` (each prints `started <name> <args>`), then python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        (bin_dir / name).write_text(f'#!/bin/sh\necho "started {name} $*"\n')
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}


def run_argv(argv: list[str], env: dict[str, str], cwd: Path = PROJECT_DIR) -> tuple[int, str, str]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def test_postgres_refuses_the_placeholder_password_at_start(services, tmp_path):
    svc = services["postgres"]
    env = fake_bin(tmp_path, "docker-entrypoint.sh")
    argv = [*svc["entrypoint"], *svc["command"]]
    assert run_argv(argv, {**env, **environment(svc)}) == (2, "", placeholder_refusal("POSTGRES_PASSWORD"))
    assert run_argv(argv, {**env, **environment(svc), "POSTGRES_PASSWORD": REAL_PASSWORD}) == \
        (0, "started docker-entrypoint.sh postgres", "")


def test_mlflow_refuses_placeholder_secrets_at_start_and_asks_every_caller_for_a_user(services, tmp_path):
    svc = services["mlflow"]
    argv = ["sh", str(MLFLOW_ENTRYPOINT)]
    env = {**fake_bin(tmp_path, "mlflow"), **environment(svc), "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini")}
    assert run_argv(argv, env) == (2, "", placeholder_refusal("POSTGRES_PASSWORD"))
    env["MLFLOW_BACKEND_STORE_URI"] = env["MLFLOW_BACKEND_STORE_URI"].replace("change-me-postgres", REAL_PASSWORD)
    assert run_argv(argv, env) == (2, "", placeholder_refusal("MLFLOW_PASSWORD"))
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = "a-real-admin-password"
    assert run_argv(argv, env) == (2, "", placeholder_refusal("MLFLOW_SECRET_KEY"))
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "a-real-csrf-key"
    code, out, err = run_argv(argv, env)
    assert (code, err) == (0, "") and out.startswith("started mlflow server --app-name basic-auth --backend-store-uri "
                                                     "postgresql+psycopg2://")
    # the users live in the backend store's database (their own tables); the file holds its password: owner only
    auth = configparser.ConfigParser()
    auth.read(tmp_path / "auth.ini")
    assert dict(auth["mlflow"]) == {"default_permission": "READ", "database_uri": env["MLFLOW_BACKEND_STORE_URI"]}
    assert (tmp_path / "auth.ini").stat().st_mode & 0o077 == 0
    assert "Flask-WTF==" in " ".join(instructions(dockerfile(svc), "RUN"))   # the auth app's CSRF check
    # every other service logs in as the .env user; the admin is created with the same password
    for name in SERVICES - {"postgres", "mlflow"}:
        env_of = environment(services[name])
        assert (env_of["MLFLOW_TRACKING_USERNAME"], env_of["MLFLOW_TRACKING_PASSWORD"]) == \
            (environment(svc)["MLFLOW_AUTH_ADMIN_USERNAME"], environment(svc)["MLFLOW_AUTH_ADMIN_PASSWORD"]), name


@pytest.mark.parametrize(("service", "variable"), [("tuner", "POSTGRES_PASSWORD"), ("pipeline", "POSTGRES_PASSWORD"),
                                                   ("scheduler", "POSTGRES_PASSWORD"), ("jupyter", "JUPYTER_TOKEN")])
def test_dev_image_services_refuse_placeholder_secrets_at_start(services, tmp_path, service, variable):
    svc = services[service]
    assert "entrypoint" not in svc  # the dev image's own entry point runs first
    assert instructions((PROJECT_DIR / "dev.Dockerfile").read_text(), "ENTRYPOINT") == \
        ['["sh", "/app/docker/entrypoint.sh"]']
    argv = ["sh", str(PROJECT_DIR / "docker" / "entrypoint.sh"), "echo", "started"]
    env = {**fake_bin(tmp_path), **environment(svc)}
    assert run_argv(argv, env) == (2, "", placeholder_refusal(variable))
    if variable == "JUPYTER_TOKEN":  # its password is checked too
        assert run_argv(argv, {**env, "JUPYTER_TOKEN": "a-real-token-0123"}) == \
            (2, "", placeholder_refusal("POSTGRES_PASSWORD"))
    # real secrets pass the check (no Postgres here: a SQLite study skips the store set-up)
    if variable == "POSTGRES_PASSWORD":  # then the MLflow user's
        with_db = {**env, "OPTUNA_STORAGE": env["OPTUNA_STORAGE"].replace("change-me-postgres", REAL_PASSWORD)}
        assert run_argv(argv, with_db) == (2, "", placeholder_refusal("MLFLOW_PASSWORD"))
    real = {**env, "JUPYTER_TOKEN": "a-real-token-0123", "OPTUNA_STORAGE": f"sqlite:///{tmp_path}/optuna.db",
            "MLFLOW_TRACKING_PASSWORD": "a-real-admin-password"}
    assert run_argv(argv, real) == (0, "started", "")


def test_make_up_refuses_placeholder_or_short_secrets(tmp_path, env_example):
    shutil.copy(PROJECT_DIR / "Makefile", tmp_path / "Makefile")

    def up(**secrets) -> tuple[int, str, str]:
        (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in {**env_example, **secrets}.items()))
        return run_argv(["make", "--no-print-directory", "-s", "up", "COMPOSE=echo compose"],
                        {"PATH": "/usr/bin:/bin"}, cwd=tmp_path)

    code, out, err = up()
    assert (code, out, err.splitlines()[0]) == (2, "", "error: .env still has the .env.example placeholder "
                                                       "(change-me...) for POSTGRES_PASSWORD JUPYTER_TOKEN API_KEY "
                                                       "MLFLOW_PASSWORD MLFLOW_SECRET_KEY: set each to a random URL-safe "
                                                       f"string, e.g. {MAKE_SECRET}")
    real = {"POSTGRES_PASSWORD": REAL_PASSWORD, "JUPYTER_TOKEN": "a-real-token-0123",
            "MLFLOW_PASSWORD": "a-real-admin-password", "MLFLOW_SECRET_KEY": "a-real-csrf-key"}
    assert up(**real)[0] == 2 and "for API_KEY:" in up(**real)[2]
    code, out, err = up(**real, API_KEY='"fifteen-chars-k"')
    assert (code, err.splitlines()[0]) == (2, "error: API_KEY in .env has 15 characters, fewer than 16: set it to a "
                                              f"random URL-safe string, e.g. {MAKE_SECRET}")
    assert up(**real, API_KEY="sixteen-chars-ok") == (0, "compose up -d --build --scale tuner=1\ncompose ps", "")


@pytest.mark.parametrize(("uid", "allow_root"), [("0", True), ("1000", False)])
def test_make_jupyter_adds_allow_root_only_for_root(uid, allow_root):
    code, out, err = run_argv(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "jupyter",
                               f"USER_ID={uid}"], {"PATH": "/usr/bin:/bin"})
    flag = " --allow-root" if allow_root else ""
    assert (code, out) == (0, f".venv/bin/jupyter lab --ip 127.0.0.1 --port 8888 --no-browser{flag} notebooks"), err


def test_make_jupyter_uses_allow_root_when_run_as_root_by_default():
    out = run_argv(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "jupyter"], {"PATH": "/usr/bin:/bin"})[1]
    assert ("--allow-root" in out) == (os.getuid() == 0)


def test_every_container_runs_with_init_no_capabilities_no_new_privileges_and_a_memory_limit(services, env_example):
    for name, svc in services.items():
        assert svc["init"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert svc["mem_limit"] == env_example[f"{name.upper()}_MEM_LIMIT"], name
        # postgres's entrypoint chowns its folders as root, then drops to the postgres user: only that is added back
        assert svc.get("cap_add", []) == (["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
                                          if name == "postgres" else []), name


def test_api_and_mlflow_run_on_a_read_only_root_with_a_tmpfs(services):
    read_only = {n for n, s in services.items() if s.get("read_only")}
    assert read_only == {"api", "mlflow"}
    for name in read_only:
        assert services[name]["tmpfs"] == ["/tmp"], name
        writable = {v.split(":")[1] for v in services[name]["volumes"]}
        assert writable == ({"/app/data", "/app/reports"} if name == "api" else {"/mlartifacts"}), name


def test_ui_ports_bind_to_localhost_unless_the_user_opts_in(services, env_example):
    assert env_example["BIND_ADDRESS"] == "127.0.0.1"
    for name in ("mlflow", "api", "jupyter"):
        (mapping,) = services[name]["ports"]
        assert mapping.startswith("127.0.0.1:"), name
    opted_in = resolve(yaml.safe_load(COMPOSE_FILE.read_text()), {**env_example, "BIND_ADDRESS": "0.0.0.0"})["services"]
    assert opted_in["mlflow"]["ports"] == ["0.0.0.0:5000:5000"]
    assert "ports" not in services["postgres"]


def test_jupyter_keeps_its_token_and_host_check(services):
    env = environment(services["jupyter"])
    assert env["JUPYTER_TOKEN"] == "change-me-jupyter"  # from .env, required (and refused while a placeholder)
    assert env["JUPYTER_CONFIG_PATH"] == "/app/docker/jupyter"
    config_file = PROJECT_DIR / "docker" / "jupyter" / "jupyter_server_config.py"
    from traitlets.config import Config

    for allowed, names in (("", ["localhost"]), ("lab.example.org, ,gpu-box", ["localhost", "lab.example.org", "gpu-box"])):
        c = Config()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("JUPYTER_ALLOWED_HOSTS", allowed)
            exec(compile(config_file.read_text(), str(config_file), "exec"), {"get_config": lambda c=c: c})
        # listening on 0.0.0.0 would turn the host check off by default: it stays on
        assert (c.ServerApp.allow_remote_access, c.ServerApp.local_hostnames) == (False, names)
    assert "ServerApp.token" not in config_file.read_text() and "--ServerApp.token" not in \
        (PROJECT_DIR / "dev.Dockerfile").read_text()


def test_batch_services_have_health_checks_on_their_process(services):
    expected = {"tuner": ["src.tune"], "pipeline": ["src.pipeline"],
                "scheduler": ["docker/scheduler.py", "--heartbeat", "/tmp/scheduler.heartbeat", "--max-age", "180"]}
    for name, args in expected.items():
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "/app/docker/healthcheck.py", *args], name
        assert args[0] in " ".join(services[name]["command"]), name


@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("compose_healthcheck", PROJECT_DIR / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_check_passes_for_a_live_process_and_fails_when_it_is_gone_or_a_zombie(healthcheck, tmp_path):
    marker = f"hc-marker-{os.getpid()}-{time.monotonic_ns()}"
    assert healthcheck.problem(marker) == f"no running process with {marker!r} in its command line (found: none)"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        deadline = time.monotonic() + 10
        while healthcheck.problem(marker) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert healthcheck.problem(marker) is None
        assert healthcheck.main([marker]) == 0
        beat = tmp_path / "beat"
        assert healthcheck.problem(marker, beat) == f"{beat} does not exist: the process has not reached its main loop"
        beat.touch()
        assert healthcheck.problem(marker, beat, 180) is None
        os.utime(beat, (time.time() - 200, time.time() - 200))
        assert healthcheck.problem(marker, beat, 180) == f"{beat} is 200 s old (more than 180 s): the process is stuck"
        live.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while healthcheck.processes(marker) != {live.pid: "T"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert healthcheck.problem(marker) == \
            f"no running process with {marker!r} in its command line (found: {{{live.pid}: 'T'}})"  # stopped
        live.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        # a zombie (dead, not reaped yet) has an empty command line: no running process
        assert healthcheck.problem(marker) == f"no running process with {marker!r} in its command line (found: none)"
        assert healthcheck.main([marker]) == 1
    finally:
        live.kill()
        live.wait()


def test_scheduler_touches_its_heartbeat_each_minute(scheduler, monkeypatch, tmp_path):
    monkeypatch.setattr(scheduler, "HEARTBEAT", tmp_path / "scheduler.heartbeat")

    def stop(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(scheduler.time, "sleep", stop)
    with pytest.raises(KeyboardInterrupt):
        scheduler.run_forever([])
    assert (tmp_path / "scheduler.heartbeat").exists()
