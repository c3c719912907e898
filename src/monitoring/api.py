"""The API's monitoring routes: the latest drift summary with links to its HTML reports, the reports themselves, and
a keyed `POST /monitoring/run` that computes a new report from the prediction log.

`create_app()` (src/serving/app.py) includes `monitoring_router(context, require_key)`, handing it how to read the
project settings and spec of a request (with the served model's name and alias) and its API-key dependency. This
module imports nothing of `src.serving`: serving depends on monitoring, never the other way round. Evidently and
Great Expectations are imported only when a run is computed, so the API starts without them.
"""

import json
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nbs_lib.champion import NoChampion, find_champion
from nbs_lib.config import Settings, Spec, UserInputError
from nbs_lib.publishing import RUN_NAME, read_latest

Context = Callable[[Request], tuple[Settings, Spec]]   # a request's project settings and spec

REPORT_FILES = {"data_drift.html", "data_summary.html", "performance.html"}
MAX_WINDOW_HOURS = 24 * 366


class ErrorDetail(BaseModel):
    detail: str = Field(description="what is wrong and what to do")


class RunRequest(BaseModel):
    """The prediction-log window to monitor: [since, until); defaults: the last DRIFT_WINDOW_HOURS up to now."""
    model_config = ConfigDict(extra="forbid")
    since: datetime | None = Field(None, description="window start (ISO 8601); default: window_hours before until")
    until: datetime | None = Field(None, description="window end (ISO 8601); default: now")
    window_hours: float | None = Field(None, gt=0, le=MAX_WINDOW_HOURS, description="default: DRIFT_WINDOW_HOURS")


class DriftedColumn(BaseModel):
    column: str
    kind: str
    test: str = Field(description="Evidently's stat test")
    score: float | None = Field(description="the test's p-value or distance")
    threshold: float


class MonitoringSummary(BaseModel):
    """The summary.json of a monitoring run (the main fields; every other field of the file is passed through)."""
    model_config = ConfigDict(extra="allow")
    run: str
    created_at: str
    dataset_drift: bool
    drift_share: float | None
    threshold: float
    drifted_count: int
    columns_checked: int
    drifted_columns: list[DriftedColumn]
    performance: dict[str, Any] | None
    links: dict[str, str] = Field(description="URL of each HTML report of this run")


def with_links(summary: dict, request: Request) -> dict:
    """The summary with the URL of each of its HTML reports."""
    links = {name: str(request.url_for("monitoring_report", run=summary["run"], name=file))
             for name, file in summary.get("reports", {}).items()}
    return {**summary, "links": links}


async def run_request(request: Request) -> RunRequest:
    """The body of POST /monitoring/run (empty: the defaults), read only after `require_api_key` let the call in."""
    raw = await request.body()
    if not raw.strip():
        return RunRequest()
    try:
        return RunRequest.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]) from e


def monitoring_router(context: Context, require_key: Callable) -> APIRouter:
    """GET /monitoring/latest, GET /monitoring/reports/{run}/{name}, POST /monitoring/run (`require_key`).

    `context(request)` gives the project settings (with the served alias) and the spec (with the served model name)."""
    router = APIRouter(prefix="/monitoring", tags=["monitoring"])
    running = threading.Lock()   # one run at a time: a run reads the whole window and takes seconds

    @router.get("/latest", response_model=MonitoringSummary, responses={404: {"model": ErrorDetail}})
    async def latest(request: Request) -> dict:
        """The latest drift summary (dataset drift flag, drifted columns, performance) with links to its HTML reports."""
        summary = read_latest(context(request)[0].reports_dir / "monitoring")
        if summary is None:
            raise HTTPException(status_code=404, detail="no monitoring report yet; run `make monitor` or "
                                                        "POST /monitoring/run (with X-API-Key)")
        return with_links(summary, request)

    @router.get("/reports/{run}/{name}", name="monitoring_report", response_class=FileResponse,
                responses={200: {"content": {"text/html": {}}}, 404: {"model": ErrorDetail}})
    async def report(run: str, name: str, request: Request) -> FileResponse:
        """One HTML report of a monitoring run."""
        path = context(request)[0].reports_dir / "monitoring" / run / name
        if not RUN_NAME.fullmatch(run) or name not in REPORT_FILES or not path.is_file():
            raise HTTPException(status_code=404, detail=f"no report {name!r} in monitoring run {run!r}; "
                                                        "GET /monitoring/latest lists the reports")
        return FileResponse(path, media_type="text/html")

    @router.post("/run", response_model=MonitoringSummary, dependencies=[Depends(require_key)],
                 responses={401: {"model": ErrorDetail}, 403: {"model": ErrorDetail}, 409: {"model": ErrorDetail},
                            422: {"model": ErrorDetail}, 503: {"model": ErrorDetail}},
                 openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                     "schema": RunRequest.model_json_schema()}}}})
    async def run(request: Request, body: Annotated[RunRequest, Depends(run_request)]) -> dict:
        """Compute a drift report from the prediction log over a window, publish it as the latest, and return it."""
        settings, spec = context(request)
        if not running.acquire(blocking=False):
            raise HTTPException(status_code=409, detail="a monitoring run is already in progress; retry when it finishes")
        try:
            return with_links(await run_in_threadpool(compute, settings, spec, body), request)
        finally:
            running.release()

    return router


def compute(settings: Settings, spec: Spec, body: RunRequest) -> dict:
    """One monitoring run over the prediction log, published under reports/monitoring; errors become HTTP errors."""
    # Evidently and Great Expectations: imported when a run is computed, not when the API starts
    from nbs_lib.drift import get_drift_settings
    from nbs_lib.monitor import monitor_sources

    try:
        find_champion(settings.mlflow_tracking_uri, spec.model_name, settings.model_alias)
    except NoChampion as e:   # none yet, or the registry does not answer: the detail says which
        raise HTTPException(status_code=503, detail=str(e)) from e
    try:
        cfg = get_drift_settings(window_hours=body.window_hours)
        result = monitor_sources(settings, spec, cfg, current="log", since=body.since, until=body.until,
                                 out_root=Path(settings.reports_dir) / "monitoring")
    except UserInputError as e:
        raise HTTPException(status_code=422, detail=str(e)) from e
    except OverflowError as e:
        raise HTTPException(status_code=422, detail=f"the window is out of range ({e}); use times after 1970") from e
    published = Path(settings.reports_dir) / "monitoring" / result.summary["run"] / "summary.json"
    return json.loads(published.read_text())   # the JSON-safe copy that was written
