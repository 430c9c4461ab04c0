"""The dashboard: HTML pages over the /v1 API, their ES modules and the vendored chart library.

The pages are static files; their scripts call /v1 with the key the user typed (sessionStorage,
sent as a header), so a page shows exactly what that key may see through the API. No key is in a
page, a URL or a cookie, and the Content-Security-Policy keeps scripts, styles and requests on
this origin (the pages work offline; no other origin can frame or script them).
"""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The repository's example job files (a source checkout or `pip install -e .`, as in the README).
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/")
def jobs_page() -> FileResponse:
    return _page("index.html")


@router.get("/ui/jobs/{job_id}")
def job_page(job_id: str) -> FileResponse:  # the script reads the id from the URL and asks /v1
    return _page("job.html")


@router.get("/ui/train")
def train_page() -> FileResponse:
    return _page("train.html")


@router.get("/ui/workers")
def workers_page() -> FileResponse:
    return _page("workers.html")


def example_jobs(examples_dir: Path = EXAMPLES) -> list[dict]:
    """[{"name", "job"}] of the example job files; the built-in digits job where there are none
    (an installed wheel or image carries no examples/ folder)."""
    found = [{"name": p.stem, "job": json.loads(p.read_text())} for p in sorted(examples_dir.glob("*.json"))]
    if found:
        return found
    from app.schemas.train import DIGITS_EXAMPLE  # noqa: PLC0415 - only for installs without examples/

    return [{"name": "digits-2d", "job": DIGITS_EXAMPLE}]


@router.get("/ui/examples")
def examples() -> dict:
    """The example job files the training page starts from (public: they are in the repository)."""
    return {"examples": example_jobs()}


def install(app: FastAPI) -> None:
    """Serve the pages and their static files from ``app``."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
