"""FastAPI dependencies of the API's routers:

    from src.serving.deps import ModelDep, StateDep, require_api_key

    @router.post("/model/reload", dependencies=[Depends(require_api_key)])
    async def reload(state: StateDep): ...   # state.settings, state.project, state.spec, state.models.current

The monitoring router (src/monitoring/api.py) does not import this module: `create_app` hands it `project_context`
and `require_api_key`, so imports go one way only, serving -> monitoring.
All are `async def`, so FastAPI calls them on the event loop instead of a worker thread.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from nbs_lib.config import Settings, Spec
from nbs_lib.serving import ServedModel

from .state import ServingState


async def get_state(request: Request) -> ServingState:
    """The app's ServingState."""
    return request.app.state.serving


StateDep = Annotated[ServingState, Depends(get_state)]


async def get_model(request: Request) -> ServedModel:
    """The model served now; 503 with what to do when there is none."""
    holder = request.app.state.serving.models
    model = holder.current
    if model is None:
        raise HTTPException(status_code=503, detail=holder.message)
    return model


ModelDep = Annotated[ServedModel, Depends(get_model)]


async def require_api_key(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Allow the call only with the configured X-API-Key; with no key configured the endpoint is disabled."""
    key = request.app.state.serving.settings.reload_key
    route = getattr(request.scope.get("route"), "path", request.url.path)
    if key is None:
        raise HTTPException(status_code=403, detail=f"{request.method} {route} is disabled: no API_KEY is configured "
                                                    "on the server; set API_KEY to enable it")
    if not x_api_key:
        raise HTTPException(status_code=401, detail="missing X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
    if not secrets.compare_digest(x_api_key.encode("utf-8", "surrogateescape"), key.encode()):
        raise HTTPException(status_code=401, detail="invalid X-API-Key", headers={"WWW-Authenticate": "X-API-Key"})


def project_context(request: Request) -> tuple[Settings, Spec]:
    """The project settings and spec of the serving app, with its MODEL_NAME and MODEL_ALIAS (the monitoring router's context)."""
    state = request.app.state.serving
    return state.project, state.spec


async def require_json(request: Request) -> None:
    """Take the body only as `Content-Type: application/json`: a browser's cross-site form or text/plain POST (which
    needs no preflight) cannot reach the endpoint."""
    sent = request.headers.get("content-type")
    if (sent or "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(status_code=415, detail=f"{request.url.path} takes a JSON body: send it with Content-Type: "
                                                    f"application/json (got {sent or 'none'})")
