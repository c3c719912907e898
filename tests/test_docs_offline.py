"""/docs and /redoc work with no internet: every asset their pages load is served by the API itself, pinned by the
vendor manifest (src/serving/static/vendor, written by `make vendor`)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from conftest import PROJECT_DIR
from fastapi.testclient import TestClient

VENDOR = PROJECT_DIR / "src" / "serving" / "static" / "vendor"
QUIET_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# every place a page or a stylesheet names another resource
REFERENCES = re.compile(r"""<script[^>]*\ssrc=["']([^"']*)["']|<link[^>]*\shref=["']([^"']*)["']|url\(\s*["']?([^"')]*)""")
# every src and href attribute of a page, whatever its tag
ATTRIBUTES = re.compile(r"""\s(?:src|href)=["']?([^"'\s>]+)""")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    """The app without its lifespan: the pages need no model."""
    from src.serving.app import create_app

    tmp = tmp_path_factory.mktemp("docs")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**QUIET_MLFLOW, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
                     "PREDICTION_LOG": str(tmp / "p.db"), "STARTUP_WAIT_SECONDS": "0"}.items():
            mp.setenv(k, v)
        yield TestClient(create_app())


def references(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in REFERENCES.finditer(text)]


def local(ref: str) -> bool:
    return ref.startswith("/") and not ref.startswith("//")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_assets_the_api_serves(client, page):
    r = client.get(page)
    assert (r.status_code, r.headers["content-type"]) == (200, "text/html; charset=utf-8")
    refs = references(r.text)
    assert refs and [ref for ref in refs if not local(ref)] == []
    assert [value for value in ATTRIBUTES.findall(r.text) if not local(value)] == []   # any src or href at all
    for ref in refs:
        asset = client.get(ref)
        suffix = ref[ref.rfind("."):]
        assert (asset.status_code, asset.headers["content-type"].split(";")[0]) == (200, CONTENT_TYPES[suffix]), ref
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        if suffix == ".css":   # what the stylesheet loads: inline data, never another host
            assert [u for u in references(asset.text) if not u.startswith("data:")] == []


def test_docs_pages_use_the_vendored_versions(client):
    pins = {e["package"]: e["version"] for e in json.loads((VENDOR / "manifest.json").read_text())["files"]}
    docs, redoc = client.get("/docs").text, client.get("/redoc").text
    assert f'src="/static/vendor/swagger-ui-dist-{pins["swagger-ui-dist"]}/swagger-ui-bundle.js"' in docs
    assert f'href="/static/vendor/swagger-ui-dist-{pins["swagger-ui-dist"]}/swagger-ui.css"' in docs
    assert '"validatorUrl": null' in docs                       # no badge image from validator.swagger.io
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in docs
    assert f'src="/static/vendor/redoc-{pins["redoc"]}/redoc.standalone.js"' in redoc
    assert "fonts.googleapis.com" not in redoc


def test_vendored_files_match_the_manifest_and_carry_their_licence():
    entries = json.loads((VENDOR / "manifest.json").read_text())["files"]
    for e in entries:
        path = VENDOR / e["file"]
        assert path.parent.name == f"{e['package']}-{e['version']}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"], e["file"]
    folders = {e["file"].split("/")[0] for e in entries}
    assert {f"{folder}/LICENSE" for folder in folders} <= {e["file"] for e in entries}
    assert sorted(p.name for p in VENDOR.iterdir() if p.is_dir()) == sorted(folders)   # nothing unlisted


def test_oauth2_redirect_and_docs_stay_out_of_the_schema(client):
    r = client.get("/docs/oauth2-redirect")
    assert r.status_code == 200 and "swaggerUIRedirectOauth2" in r.text
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc", "/docs/oauth2-redirect"} & set(paths)
    assert not any(p.startswith("/static") for p in paths)


def test_static_files_are_counted_under_one_route_and_bad_paths_are_404(client):
    css = [ref for ref in references(client.get("/docs").text) if ref.endswith(".css")][0]
    assert client.get(css).status_code == 200
    assert client.get("/static/vendor/nope.js").status_code == 404
    assert client.get("/static/%2e%2e/docs.py").status_code == 404             # no way out of the static folder
    assert client.get("/static/vendor/manifest.json").headers["cache-control"] == "no-cache"   # not versioned
    metrics = client.get("/metrics").text
    assert 'http_requests_total{method="GET",path="/static",status="200"}' in metrics
    assert 'http_requests_total{method="GET",path="/static",status="404"} 2.0' in metrics
