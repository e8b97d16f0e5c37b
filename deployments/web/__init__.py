"""The teacher web page: ``GET /`` (index.html) and ``GET /static/<file>`` from this package's ``static/``.

Plain HTML + CSS + JS, no build step; importable without Ray (``api.include_router(web.router)``).
"""

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
          ".ico": "image/x-icon"}

router = APIRouter(tags=["web"])


def _file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if STATIC_DIR not in path.parents or not path.is_file() or path.suffix not in _TYPES:
        raise HTTPException(status_code=404, detail="not found")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return _file("index.html")


@router.get("/static/{name:path}", include_in_schema=False)
async def static(name: str) -> FileResponse:
    return _file(name)
