"""The API's endpoints. Request and response models are generated from the dataset spec.

(No `from __future__ import annotations` here: FastAPI reads the generated record models from the annotations.)
"""

import logging
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError, create_model

from nbs_lib.champion import NoChampion
from nbs_lib.config import Spec
from nbs_lib.predictor import Prediction
from nbs_lib.serving import ServedModel, as_records, batch_decoder, request_model

from .deps import ModelDep, StateDep, require_api_key, require_json
from .errors import error_response
from .metrics import CONTENT_TYPE
from .state import ServingState

log = logging.getLogger(__name__)

INLINE_ROWS = 64  # larger batches are scored in a worker thread, so the event loop keeps answering
INLINE_BYTES = 65_536  # larger batch bodies are decoded (and their errors worded) in a worker thread
PREDICT_BODY_BYTES = 65_536  # the largest /predict body (a JSON record of the specs is ~400 bytes)
OTHER_BODY_BYTES = 65_536  # the largest body of any other route (the app's BodyLimit)
BYTES_PER_RECORD = 2048  # a batch body may use this much per record (a JSON record of the specs is ~400 bytes)


class ErrorDetail(BaseModel):
    detail: str = Field(description="what is wrong and what to do")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model_name: str
    model_version: str
    problem: str | None = Field(None, description="why the alias's current version is not the one served "
                                "(refused, or the registry did not answer); absent when all is well")


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    run_id: str
    metrics: dict[str, float]
    tags: dict[str, str] = Field(description="lineage.* and gate.* tags of the registered version")
    predictor: Literal["compiled", "pipeline"]
    loaded_at: str


class Reloaded(BaseModel):
    status: Literal["reloaded", "unchanged"]
    model_name: str
    model_version: str
    previous_version: str | None


NO_MODEL = {503: {"model": ErrorDetail, "description": "no model is served (no champion yet, or MLflow unreachable)"}}
JSON_ONLY = {415: {"model": ErrorDetail, "description": "the body is not sent as Content-Type: application/json"}}
KEYED = {401: {"model": ErrorDetail, "description": "missing or invalid X-API-Key"},
         403: {"model": ErrorDetail, "description": "disabled: no API_KEY configured on the server"}}


def response_models(spec: Spec) -> tuple[type[BaseModel], type[BaseModel]]:
    """The /predict and /predict/batch response models of this spec (labels and probabilities for classification)."""
    item: dict[str, Any] = {}
    if spec.task == "classification":
        item["prediction"] = (Literal[tuple(spec.target_levels)], ...)
        item["probabilities"] = (dict[str, float], Field(description="probability of each class"))
    else:
        item["prediction"] = (float, ...)
    served = {"model_name": (str, ...), "model_version": (str, ...)}
    Item = create_model("PredictionItem", **item)
    single = create_model("PredictResponse", **item, **served)
    batch = create_model("BatchPredictResponse", predictions=(list[Item], ...), **served)
    return single, batch


class Answer:
    """A model's response bodies: the prediction and, for a classifier, probabilities keyed by class in the spec's
    level order. Encoded by msgspec from per-model structs: half the time of dicts + json for a 10,000-record batch."""

    def __init__(self, spec: Spec, classes: np.ndarray | None) -> None:
        self.classes = None if classes is None else [str(c) for c in classes]
        self.order: list[int] = []
        if self.classes is not None:
            known = spec.target_levels and set(self.classes) <= set(spec.target_levels)
            self.order = [self.classes.index(c) for c in spec.target_levels if c in self.classes] if known \
                else list(range(len(self.classes)))
            self.classes = [self.classes[i] for i in self.order]
            self.probas = msgspec.defstruct("Probabilities", [(f"p{i}", float, msgspec.field(name=c))
                                                              for i, c in enumerate(self.classes)])
            item = [("prediction", Any), ("probabilities", self.probas)]
        else:
            item = [("prediction", Any)]
        self.item = msgspec.defstruct("Item", item)
        self.single = msgspec.defstruct("Single", [*item, ("model_name", str), ("model_version", str)])
        self.encode = msgspec.json.Encoder().encode

    def _rows(self, pred: Prediction) -> list[tuple]:
        if pred.proba is None:
            return [(v,) for v in pred.values]
        probas = self.probas
        return [(v, probas(*p)) for v, p in zip(pred.values, pred.proba[:, self.order].tolist(), strict=True)]

    def one(self, pred: Prediction, model: ServedModel) -> bytes:
        """The /predict body of a one-record prediction."""
        return self.encode(self.single(*self._rows(pred)[0], model.name, model.version))

    def many(self, pred: Prediction, model: ServedModel) -> bytes:
        """The /predict/batch body: predictions in the records' order."""
        item = self.item
        return self.encode({"predictions": [item(*r) for r in self._rows(pred)], "model_name": model.name,
                            "model_version": model.version})


def answer_cache(spec: Spec):
    """A function giving the Answer of a served model, rebuilt only when the served model changes."""
    last: tuple[ServedModel | None, Answer | None] = (None, None)

    def answer_for(model: ServedModel) -> Answer:
        nonlocal last
        if last[0] is not model:
            last = (model, Answer(spec, model.predictor.classes))
        return last[1]
    return answer_for


def batch_body_bytes(limit: int) -> int:
    """The largest /predict/batch body: BYTES_PER_RECORD for each of `limit` records, and some slack."""
    return BYTES_PER_RECORD * limit + 4096


def decode_or_refuse(decode: Callable[[bytes], list[dict]], raw: bytes, spec: Spec, limit: int) -> list[dict]:
    """The batch's records, or an HTTPException whose detail lists at most MAX_ERRORS of its errors (413 when it has
    more than `limit` records). Run in a worker thread for a large body: decoding and wording errors take time."""
    try:
        return decode(raw)
    except ValidationError as e:
        status, detail = error_response(e.errors(include_url=False), spec, limit, total=e.error_count(),
                                        loc_prefix=("body",))
        raise HTTPException(status_code=status, detail=detail) from e


def score(model: ServedModel, records: list[dict]) -> Prediction:
    """Predict, turning a record the model cannot score into a 422."""
    try:
        return model.predictor.predict(records)
    except ValueError as e:
        raise HTTPException(status_code=422, detail=f"the records cannot be scored: {e}") from e


def prediction_router(state: ServingState) -> APIRouter:
    """POST /predict and POST /predict/batch, with request models generated from the spec."""
    spec, limit = state.spec, state.settings.batch_limit
    Record = request_model(spec)
    decode_batch = batch_decoder(spec, limit)
    Single, Many = response_models(spec)
    answer_for = answer_cache(spec)
    router = APIRouter(tags=["predict"])

    @router.post("/predict", response_model=Single, dependencies=[Depends(require_json)],
                 responses={**NO_MODEL, **JSON_ONLY, 400: {"model": ErrorDetail, "description": "the body is not text (UTF-8)"},
                            413: {"model": ErrorDetail, "description": f"a body over {PREDICT_BODY_BYTES:,} bytes"}})
    async def predict(record: Record, model: ModelDep) -> Response:
        """Score one record: the prediction, class probabilities (classification), model name and version."""
        records = as_records([record])
        pred = score(model, records)
        state.record(model, records, pred.values)
        return Response(content=answer_for(model).one(pred, model), media_type="application/json")

    batch_body = {"title": f"{Record.__name__}Batch", "type": "object", "additionalProperties": False,
                  "required": ["records"], "properties": {"records": {
                      "type": "array", "maxItems": limit, "items": {"$ref": f"#/components/schemas/{Record.__name__}"}}}}

    @router.post("/predict/batch", response_model=Many, dependencies=[Depends(require_json)],
                 responses={**NO_MODEL, **JSON_ONLY, 413: {"model": ErrorDetail, "description": f"more than {limit} records, or a body "
                                                                      "larger than a full batch needs"},
                            422: {"description": "Validation Error", "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}},
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": batch_body}}}})
    async def predict_batch(request: Request, model: ModelDep) -> Response:
        """Score up to BATCH_LIMIT records `{"records": [...]}` in one call; the predictions keep their order."""
        # Validated from the raw bytes straight into plain dicts (msgspec; pydantic words the errors of a bad body):
        # several times faster than FastAPI's json.loads + one model object per record.
        raw = await request.body()   # at most batch_body_bytes(limit): BodyLimit (limits.py) answers 413 past it
        if len(raw) > INLINE_BYTES:
            records = await run_in_threadpool(decode_or_refuse, decode_batch, raw, spec, limit)
        else:
            records = decode_or_refuse(decode_batch, raw, spec, limit)
        if not records:
            return Response(content=answer_for(model).many(Prediction([], None), model), media_type="application/json")
        if len(records) > INLINE_ROWS:
            pred = await run_in_threadpool(score, model, records)
        else:
            pred = score(model, records)
        state.record(model, records, pred.values)
        return Response(content=answer_for(model).many(pred, model), media_type="application/json")

    return router


def system_router() -> APIRouter:
    """Health, readiness, the served model, reload and metrics."""
    router = APIRouter(tags=["service"])

    @router.get("/health", response_model=Health)
    async def health() -> dict:
        """The process is alive (it may not serve a model yet: see /ready)."""
        return {"status": "ok"}

    @router.get("/ready", response_model=Ready, response_model_exclude_none=True, responses=NO_MODEL)
    async def ready(model: ModelDep, state: StateDep) -> dict:
        """A model is loaded and predictions can be made; `problem` says why a newer champion is not served."""
        return {"status": "ready", "model_name": model.name, "model_version": model.version,
                "problem": state.models.last_error or None}

    @router.get("/model", response_model=ModelInfo, responses=NO_MODEL)
    async def model_info(model: ModelDep) -> dict:
        """The served version: name, version, alias, run id, metrics and lineage/gate tags."""
        return model.describe()

    @router.post("/model/reload", response_model=Reloaded, dependencies=[Depends(require_api_key)],
                 responses={**KEYED, **NO_MODEL})
    async def reload(state: StateDep) -> dict:
        """Swap to the alias's current version atomically; requests in flight finish on the old one. With several
        workers, the others follow within about a second plus their own load (they watch a shared signal file)."""
        holder = state.models
        before = holder.current
        try:
            outcome, model = await run_in_threadpool(holder.refresh)
        except NoChampion as e:
            raise HTTPException(status_code=503, detail=holder.message) from e
        except Exception as e:
            serving = f"still serving version {before.version}" if before else "nothing is served"
            raise HTTPException(status_code=503, detail=f"could not load models:/{state.spec.model_name}@"
                                f"{state.project.model_alias} ({type(e).__name__}: {e}); {serving}") from e
        await run_in_threadpool(holder.announce, state.reload_signal)
        return {"status": "reloaded" if outcome == "loaded" else "unchanged", "model_name": model.name,
                "model_version": model.version, "previous_version": before.version if before else None}

    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    async def metrics(state: StateDep) -> Response:
        """Requests, latency histogram, predictions per class and the served model version (Prometheus)."""
        state.sync_metrics()
        return Response(content=state.metrics.render(), media_type=CONTENT_TYPE)

    return router
