"""What the API serves, from the project's one `Settings` (nbs_lib.config): its `serving` section holds the API's own
knobs (API_KEY, BATCH_LIMIT, ...), the shared fields say where the registry and the prediction log are.

`python -m src.serving.settings` is the image's pre-start check: a bad setting stops the container with one line
before uvicorn starts any worker (a worker that fails to import the app would only be restarted, again and again)."""

from __future__ import annotations

from nbs_lib.config import Settings, Spec, UserInputError, get_settings, load_spec


def serving_context(project: Settings | None = None) -> tuple[Settings, Spec]:
    """The settings (environment by default; the `serving` section read and checked now) and the spec with the name of
    the model served: MODEL_NAME, else the spec's `model_name`."""
    project = project or get_settings()
    name = project.serving.model_name
    spec = load_spec(project.spec, project.project_dir)
    return project, spec.model_copy(update={"model_name": name}) if name else spec


def main() -> int:
    import sys

    try:
        serving_context()
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
