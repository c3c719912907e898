"""`/docs` (Swagger UI) and `/redoc` on assets the API serves itself under `/static`, so both work with no internet.

The assets are npm packages vendored byte for byte under static/vendor/<package>-<version>/ with their licences;
static/vendor/manifest.json pins each file's package, version and sha256. `make vendor` fetches them again with
`npm pack` (`make vendor SWAGGER_UI=x REDOC=y` to update), so no minified file is edited by hand. Redoc stays on
2.x: FastAPI's `get_redoc_html` loads it as a classic script, and Redoc 3's bundle is an ES module that sends
telemetry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
from functools import cache
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
MANIFEST = VENDOR_DIR / "manifest.json"
STATIC_URL = "/static"
IMMUTABLE = "public, max-age=31536000, immutable"   # a versioned path never changes content
# files each package contributes (paths in its npm tarball, under package/): what the pages load, then its licences
FILES = {"swagger-ui-dist": ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png",
                             "LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"),
         "redoc": ("bundles/redoc.standalone.js", "LICENSE")}
OPTIONS = {"swagger-ui": "swagger-ui-dist", "redoc": "redoc"}   # `python -m src.serving.docs --<option> VERSION`


@cache
def vendored() -> dict[tuple[str, str], str]:
    """(package, file name) -> the file's path under /static, from the manifest (read on the first docs request)."""
    entries = json.loads(MANIFEST.read_text())["files"]
    return {(e["package"], PurePosixPath(e["file"]).name): f"vendor/{e['file']}" for e in entries}


def asset_url(request: Request, package: str, name: str) -> str:
    """The vendored file's URL path, behind the proxy prefix (root_path) if any: never another host."""
    return f"{request.scope.get('root_path', '').rstrip('/')}{STATIC_URL}/{vendored()[package, name]}"


class VendoredFiles(StaticFiles):
    """/static: a file in a versioned folder (vendor/<package>-<version>/) is cached for a year, anything else is
    revalidated. Sets the request's route to its mount, so /metrics counts these under path="/static"."""

    route: Mount | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.route is not None:
            scope["route"] = self.route
        await super().__call__(scope, receive, send)

    def file_response(self, full_path, stat_result, scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        versioned = len(PurePosixPath(self.get_path(scope)).parts) > 2
        response.headers["Cache-Control"] = IMMUTABLE if versioned else "no-cache"
        return response


def docs_router(app: FastAPI) -> APIRouter:
    """FastAPI's own /docs, its OAuth2 redirect and /redoc pages, on the vendored assets (build the app with
    docs_url=None, redoc_url=None)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        redirect = app.swagger_ui_oauth2_redirect_url
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=asset_url(request, "swagger-ui-dist", "swagger-ui-bundle.js"),
            swagger_css_url=asset_url(request, "swagger-ui-dist", "swagger-ui.css"),
            swagger_favicon_url=asset_url(request, "swagger-ui-dist", "favicon-32x32.png"),
            oauth2_redirect_url=root + redirect if redirect else None, init_oauth=app.swagger_ui_init_oauth,
            # no validator badge: it is an image from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})})

    if app.swagger_ui_oauth2_redirect_url:
        @router.get(app.swagger_ui_oauth2_redirect_url)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(openapi_url=root + app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=asset_url(request, "redoc", "redoc.standalone.js"),
                              redoc_favicon_url=asset_url(request, "swagger-ui-dist", "favicon-32x32.png"),
                              with_google_fonts=False)

    return router


def add_offline_docs(app: FastAPI) -> None:
    """/docs, /redoc and the /static files they load."""
    app.include_router(docs_router(app))
    files = VendoredFiles(directory=STATIC_DIR)
    files.route = Mount(STATIC_URL, app=files, name="static")
    app.router.routes.append(files.route)   # what app.mount does, keeping the Mount for the metrics label


# ------------------------------------------------------------------------------- make vendor: fetch from npm ----

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pinned() -> dict[str, str]:
    """{package: version} of the vendored assets, from the manifest."""
    return {e["package"]: e["version"] for e in json.loads(MANIFEST.read_text())["files"]}


def npm_pack(package: str, version: str, into: Path) -> Path:
    """The package's published tarball, fetched by `npm pack` into `into`."""
    try:
        out = subprocess.run(["npm", "pack", "--json", f"{package}@{version}"], cwd=into, check=True,
                             capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise SystemExit("error: npm not found; install Node.js (it brings npm) to vendor the docs assets") from None
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"error: npm pack {package}@{version} failed: {e.stderr.strip()[-500:]}") from None
    return into / json.loads(out)[0]["filename"]


def vendor(pins: dict[str, str], dest: Path = VENDOR_DIR) -> list[dict[str, str]]:
    """Replace `dest` with FILES of each package@version from npm, and write its manifest.json; returns the entries.
    Everything is fetched into a temporary folder first, so a failed fetch leaves `dest` as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        new, entries = Path(tmp) / "vendor", []
        for package, version in sorted(pins.items()):
            folder = new / f"{package}-{version}"
            folder.mkdir(parents=True)
            with tarfile.open(npm_pack(package, version, Path(tmp))) as tar:
                for member in FILES[package]:
                    source = tar.extractfile(f"package/{member}")
                    if source is None:
                        raise SystemExit(f"error: {package}@{version} has no file {member}; update FILES in {__file__}")
                    target = folder / PurePosixPath(member).name
                    target.write_bytes(source.read())
                    entries.append({"package": package, "version": version, "file": f"{folder.name}/{target.name}",
                                    "sha256": sha256(target)})
        manifest = {"about": "written by `make vendor` (src/serving/docs.py): npm packages served by the API for "
                             "/docs and /redoc; do not edit", "files": entries}
        (new / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(new, dest)
    vendored.cache_clear()
    return entries


def main(argv: list[str] | None = None) -> None:
    """`python -m src.serving.docs [--swagger-ui VERSION] [--redoc VERSION]`: vendor the pinned versions, or these."""
    parser = argparse.ArgumentParser(description=vendor.__doc__)
    for option in OPTIONS:
        parser.add_argument(f"--{option}", default="", help="npm version (default: the one in the manifest)")
    args = vars(parser.parse_args(argv))
    pins = pinned() if MANIFEST.exists() else {}
    pins.update({OPTIONS[k.replace("_", "-")]: v for k, v in args.items() if v})
    if missing := set(FILES) - set(pins):
        parser.error(f"no version for {', '.join(sorted(missing))}: pass it, e.g. --redoc 2.5.4")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for e in vendor(pins):
        log.info("%-48s %s", e["file"], e["sha256"])


if __name__ == "__main__":
    main()
