"""The API's settings, read from the environment (pydantic-settings); the project's `Settings` fill the defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nbs_lib.config import Settings, Spec, UserInputError, get_settings, load_spec

PLACEHOLDER_PREFIX = "change-me"  # .env.example's secrets start with this: refused at start, never a working key
MIN_API_KEY_LENGTH = 16
MAKE_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ServingSettings(BaseSettings):
    """Every knob of the API; each field is read from the environment variable of the same name (upper case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False, env_ignore_empty=True)

    spec: str = ""                        # SPEC: dataset spec; default: the project's (specs/obesity.yaml)
    mlflow_tracking_uri: str = ""         # MLFLOW_TRACKING_URI; default: the project's (sqlite under MODELS_DIR)
    model_name: str = ""                  # MODEL_NAME: registered model; default: the spec's model_name
    model_alias: str = "champion"         # MODEL_ALIAS: the alias served
    api_key: SecretStr | None = None      # API_KEY: X-API-Key of the keyed POSTs (>= 16 characters); unset: disabled
    batch_limit: int = Field(10_000, ge=1)                # BATCH_LIMIT: records per POST /predict/batch
    prediction_log: Path | None = None    # PREDICTION_LOG: SQLite prediction log; default: the project's
    log_predictions: bool = True          # LOG_PREDICTIONS=false: do not log scored records
    model_poll_seconds: float = Field(0.0, ge=0)          # MODEL_POLL_SECONDS: look for a new champion this often; 0: off
    startup_wait_seconds: float = Field(20.0, ge=0)       # STARTUP_WAIT_SECONDS: longest startup waits for the first load

    @field_validator("api_key")
    @classmethod
    def _real_key(cls, value: SecretStr | None) -> SecretStr | None:
        """Unset (or empty): the keyed endpoints are disabled. Set: a real secret, never the .env.example placeholder."""
        key = value.get_secret_value() if value is not None else ""
        how = f"set API_KEY to a random string (e.g. {MAKE_KEY}), or unset it to disable the keyed endpoints"
        if key.startswith(PLACEHOLDER_PREFIX):
            raise ValueError(f"API_KEY is still the .env.example placeholder ({PLACEHOLDER_PREFIX}...): {how}")
        if key and len(key) < MIN_API_KEY_LENGTH:
            raise ValueError(f"API_KEY has {len(key)} characters, fewer than {MIN_API_KEY_LENGTH}: {how}")
        return value if key else None

    @property
    def reload_key(self) -> str | None:
        """The API key, or None when unset (the keyed endpoints are disabled)."""
        return self.api_key.get_secret_value() if self.api_key else None


def read_settings(**overrides) -> ServingSettings:
    """ServingSettings from the environment (keyword overrides win); a bad value is a UserInputError."""
    try:
        return ServingSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(problem(err) for err in e.errors())
        raise UserInputError(f"Invalid serving setting: {problems}. Fix the environment variable.") from e


def problem(err: dict) -> str:
    """One validation error as `NAME=value: message`; a secret's value is never shown."""
    name = ".".join(map(str, err["loc"])).upper()
    if name == "API_KEY":
        return err["msg"].removeprefix("Value error, ")
    return f"{name}={err.get('input')!r}: {err['msg']}"


def resolve(settings: ServingSettings) -> tuple[ServingSettings, Settings, Spec]:
    """Fill the empty fields from the project settings and the spec; returns (serving, project, spec)."""
    project = get_settings(spec=settings.spec, mlflow_tracking_uri=settings.mlflow_tracking_uri,
                           prediction_log=settings.prediction_log)
    spec = load_spec(project.spec, project.project_dir)
    filled = settings.model_copy(update={
        "spec": project.spec, "mlflow_tracking_uri": project.mlflow_tracking_uri,
        "model_name": settings.model_name or spec.model_name, "prediction_log": project.prediction_log})
    return filled, project, spec


def main() -> int:
    """`python -m src.serving.settings`: exit 2 with one line naming the bad setting, before uvicorn starts any worker
    (a worker that fails to import the app would only be restarted, again and again)."""
    import sys

    try:
        read_settings()
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
