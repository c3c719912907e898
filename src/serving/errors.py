"""Error bodies of bad requests that always serialise and stay small, whatever the client sent.

A 422 lists at most MAX_ERRORS errors (then one line saying how many more there were), echoes at most a short prefix
of each bad value, and writes NaN and ±Infinity (which Python's JSON reader and pydantic's accept, but strict JSON
cannot write back) as the text that sent them, and a lone surrogate (which UTF-8 cannot encode) as its escape.
"""

from __future__ import annotations

import json
import math
from typing import Any

from nbs_lib.config import Spec
from nbs_lib.serving import explain_error

MAX_ERRORS = 20      # a 422 lists this many errors at most, then how many more there were
ECHO_CHARS = 100     # a bad value longer than this (as text) is echoed as its first ECHO_CHARS characters
ECHO_JSON = 1_000    # a bad object or array (e.g. the record of a missing field) is echoed whole up to this size
MSG_CHARS = 300      # an error message is cut here (it quotes the bad value)


def finite(value: Any) -> Any:
    """The value with each NaN, Infinity and -Infinity written as that text (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def utf8_safe(value: Any) -> Any:
    """The value with every string made encodable as UTF-8: a lone surrogate (valid JSON, "\\ud800", but no text)
    is written as its escape, since the response could not be encoded otherwise."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {utf8_safe(k): utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [utf8_safe(v) for v in value]
    return value


def cut(text: str, limit: int = ECHO_CHARS) -> str:
    """The text, or its first `limit` characters and its length when longer."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def echo(value: Any) -> Any:
    """A bad value as a 422 may echo it: JSON-safe and short."""
    if isinstance(value, bytes | bytearray):
        return bytes(value[:200]).decode("utf-8", "replace")
    if isinstance(value, str):
        return cut(value)
    if isinstance(value, dict | list | tuple):
        try:
            text = json.dumps(finite(value), default=str)
        except (RecursionError, ValueError):
            return "(nested too deeply to echo)"
        return finite(value) if len(text) <= ECHO_JSON else cut(text)
    return finite(value)


def json_safe(err: dict) -> dict:
    """A validation error that always serialises and stays short: the input echoed by `echo`, the message cut at
    MSG_CHARS, context values as strings."""
    out = dict(err)
    if "input" in out:
        out["input"] = echo(out["input"])
    if isinstance(out.get("msg"), str):
        out["msg"] = cut(out["msg"], MSG_CHARS)
    if isinstance(out.get("ctx"), dict):
        out["ctx"] = {k: finite(v) if isinstance(v, str | int | float | bool | None) else str(v)
                      for k, v in out["ctx"].items()}
    return out


def too_many_records(limit: int, n: Any) -> str:
    """The 413 detail of a batch over BATCH_LIMIT records."""
    return (f"a batch takes at most {limit} records, this one has {n}; "
            "split it into smaller batches (the server's limit is BATCH_LIMIT)")


def error_response(errors: list[dict], spec: Spec | None, batch_limit: int, total: int | None = None,
                   loc_prefix: tuple = ()) -> tuple[int, Any]:
    """(status, detail) of a request's validation errors: 413 for a batch over the limit; else 422 with at most
    MAX_ERRORS errors (worded by the spec's fields when `spec` is given), then a line counting the others."""
    for err in errors:
        if err.get("type") == "too_long" and tuple(err.get("loc", ()))[-1:] == ("records",):
            return 413, too_many_records(batch_limit, (err.get("ctx") or {}).get("actual_length"))
    total = len(errors) if total is None else total
    shown = [{**e, "loc": (*loc_prefix, *e.get("loc", ()))} for e in errors[:MAX_ERRORS]]
    detail = utf8_safe([json_safe(explain_error(e, spec) if spec is not None else e) for e in shown])
    if total > len(shown):
        detail.append({"type": "too_many_errors", "loc": ["body"],
                       "msg": f"{total - len(shown):,} more errors are not listed; fix these and send the body again"})
    return 422, detail
