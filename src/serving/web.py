"""The web app for people who do not write code: `GET /` is a form generated from the spec (a number input with the
feature's range and unit, or a select of its levels; the spec's description as the label and what it accepts as the
help), prefilled with the served champion's typical record. It calls `POST /predict` and shows the prediction, the
class probabilities as bars (or the value of a regression) and the model version; a field the API refuses gets the
API's own 422 message beside it. Everything it loads is served from /static/app/: it works with no internet."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from nbs_lib.config import FeatureSpec, Spec
from nbs_lib.serving import describe_feature, example_record

from .state import ServingState

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


def form_field(index: int, column: str, f: FeatureSpec, value: Any) -> dict[str, Any]:
    """What the template needs to draw one input: its id, the CSV column it fills, label, unit, help, bounds or
    levels, and its starting value ("" for null)."""
    shown = "" if value is None or (isinstance(value, float) and math.isnan(value)) else value
    label, _, scale = (f.description or column).partition(": ")   # "How often ...: 1 never, 2 sometimes, 3 always"
    return {"id": f"field-{index}", "column": column, "label": label, "scale": scale,
            "name_shown": column if f.description else "", "unit": f.unit, "help": describe_feature(f),
            "kind": f.kind, "levels": list(f.levels or []), "min": f.min, "max": f.max,
            "nullable": f.max_null_share > 0, "value": shown}


def form_fields(spec: Spec, example: dict[str, Any]) -> list[dict[str, Any]]:
    """Every feature of the spec as a form field, in the spec's order, starting from `example`."""
    return [form_field(i, col, f, example.get(col)) for i, (col, f) in enumerate(spec.features.items())]


def web_router(state: ServingState) -> APIRouter:
    """GET / (the prediction form); its assets are under /static/app/."""
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    async def predict_page(request: Request) -> HTMLResponse:
        model = state.models.current
        typical = model is not None and bool(model.example)   # logged with the version (`06_champion`)
        example = model.example if typical else example_record(state.spec)
        return TEMPLATES.TemplateResponse(request, "predict.html", {
            "spec": state.spec, "fields": form_fields(state.spec, example), "model": model, "typical": typical,
            "classification": state.classification, "no_model": None if model else state.models.message})

    return router
