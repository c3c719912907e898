"""The FastAPI app: `create_app()` builds it; the lifespan loads `models:/<name>@<alias>` once.

Run it with `make serve`, or `uvicorn src.serving.app:app --host 0.0.0.0 --port 8000 [--workers N]`; settings come
from the environment (the project's one `Settings` and its `serving` section, read by src/serving/settings.py). The
module-level `app` is built on first access, so importing this module does nothing.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import nbs_lib
from nbs_lib.config import Settings, UserInputError
from nbs_lib.serving import request_model
from src.monitoring.api import monitoring_router

from .deps import project_context, require_api_key
from .docs import add_offline_docs
from .errors import error_response
from .limits import BodyLimit
from .metrics import MetricsMiddleware
from .routes import OTHER_BODY_BYTES, PREDICT_BODY_BYTES, batch_body_bytes, prediction_router, system_router
from .settings import serving_context
from .state import ServingState
from .web import web_router

log = logging.getLogger(__name__)

PREDICTION_PATHS = frozenset({"/predict", "/predict/batch"})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the champion (waiting at most STARTUP_WAIT_SECONDS: the API starts even with MLflow down), then serve."""
    if not logging.getLogger().handlers:   # under plain uvicorn: show the app's own INFO lines (model loads)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
        logging.getLogger("alembic").setLevel(logging.WARNING)
    state: ServingState = app.state.serving
    first = state.start()
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(first)), timeout=state.settings.startup_wait_seconds)
    except TimeoutError:
        log.warning("the first model load is still running after %.0f s; serving 503 until it finishes",
                    state.settings.startup_wait_seconds)
    gc.collect()
    gc.freeze()   # startup objects (libraries, the model) leave the GC's view: full collections stay short
    if state.models.current is None:
        log.warning("%s; the API answers 503 until a champion is loaded (POST /model/reload or MODEL_POLL_SECONDS)",
                    state.models.message)
    try:
        yield
    finally:
        state.stop()


def validation_handler(state: ServingState):
    """422 whose messages name the field and what it accepts (short, JSON-safe, at most MAX_ERRORS); 413 for a batch
    over the limit."""
    async def handle(request: Request, exc: RequestValidationError) -> JSONResponse:
        spec = state.spec if request.url.path in PREDICTION_PATHS else None
        status, detail = error_response(list(exc.errors()), spec, state.settings.batch_limit)
        return JSONResponse(status_code=status, content={"detail": jsonable_encoder(detail)})
    return handle


def create_app(project: Settings | None = None) -> FastAPI:
    """The API for the spec and registered model the settings name (environment by default). No I/O here."""
    project, spec = serving_context(project)
    state = ServingState(project=project, spec=spec)
    settings = state.settings
    app = FastAPI(title=f"{spec.name} model API", version=nbs_lib.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,   # added by add_offline_docs, on vendored assets: no CDN
                  description=f"Serves `models:/{spec.model_name}@{project.model_alias}` from "
                              f"{project.mlflow_tracking_uri}. {spec.description}")
    app.state.serving = state
    app.add_middleware(BodyLimit, limits={"/predict": PREDICT_BODY_BYTES, "/predict/batch": batch_body_bytes(settings.batch_limit)},
                       default=OTHER_BODY_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)   # outermost: counts the 413s too
    app.add_exception_handler(RequestValidationError, validation_handler(state))
    app.include_router(system_router())
    app.include_router(prediction_router(state))
    app.include_router(monitoring_router(project_context, require_api_key))
    app.include_router(web_router(state))
    add_offline_docs(app)
    app.openapi = openapi_with_served_example(app, state)
    return app


def openapi_with_served_example(app: FastAPI, state: ServingState):
    """`app.openapi` whose record example is the served champion's typical record (medians and most frequent levels
    of its training split), not the middle of every range: /docs' "Try it out" starts from an ordinary record, and it
    follows a reload. The schema itself is built once by FastAPI; only the example is put in per call."""
    build = app.openapi
    record = request_model(state.spec).__name__

    def openapi() -> dict:
        schema = build()
        model = state.models.current
        if model is None or not model.example or record not in schema.get("components", {}).get("schemas", {}):
            return schema
        served = copy.deepcopy(schema)
        served["components"]["schemas"][record]["examples"] = [model.example]
        return served
    return openapi


def __getattr__(name: str) -> FastAPI:
    """`src.serving.app:app` for uvicorn, built from the environment on first access."""
    if name == "app":
        try:
            globals()["app"] = built = create_app()
        except UserInputError as e:   # one line, not a traceback (the Dockerfile checks first: src.serving.settings)
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
