"""The documentation pages and their assets, which ship in the `fastapi-offline` package."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse

from shipyard.errors import NotFound, shown

router = APIRouter(include_in_schema=False)
OPENAPI = "/openapi.json"
ASSETS = "/docs/assets/"
# name -> media type: only these files are served.
FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
         "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


def _folder() -> Path:
    # Found, not imported: the package's own module would build a FastAPI app class of its own.
    spec = find_spec("fastapi_offline")
    assert spec is not None and spec.submodule_search_locations, "fastapi-offline is a dependency of shipyard"
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=OPENAPI, title="shipyard API", swagger_js_url=ASSETS + "swagger-ui-bundle.js",
                               swagger_css_url=ASSETS + "swagger-ui.css", swagger_favicon_url=ASSETS + "favicon.png")


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url=OPENAPI, title="shipyard API", redoc_js_url=ASSETS + "redoc.standalone.js",
                          redoc_favicon_url=ASSETS + "favicon.png", with_google_fonts=False)


@router.get(ASSETS + "{name}")
async def asset(name: str) -> FileResponse:
    if name not in FILES:
        raise NotFound(f"no documentation asset {shown(name)}; there are {', '.join(FILES)}")
    return FileResponse(_folder() / name, media_type=FILES[name], headers={"cache-control": "public, max-age=86400"})
