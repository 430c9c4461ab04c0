"""Every failure is JSON ``{"detail": message, "field": name-or-null}`` with the right status."""
from __future__ import annotations

import logging
import reprlib

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from app.core.tensors import TensorError
from worker.store import is_out_of_memory

log = logging.getLogger("convnd.api")
STORE_FULL = ("the job store is full (its memory limit is reached): retry once running jobs end and their data "
              "expire, or ask the operator to raise the limit")


class ApiError(Exception):
    """An error answer: status, message and the field it is about."""

    def __init__(self, status: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers


def _json(status: int, detail: str, field: str | None = None, headers=None, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field, **extra}, status_code=status, headers=headers)


ECHO_CHARS = 200       # of a refused value or a field's name, quoted back in its error
ECHO_ERRORS = 20       # errors listed in one answer; the rest counted
# reprlib cuts while it writes: no 5 MB repr built to be cut, and no recursion past a few levels
# (plain repr of a value nested ~980 deep, just inside the JSON parser's limit, raised RecursionError)
_ECHO = reprlib.Repr()   # (keyword arguments only from Python 3.12)
_ECHO.maxlevel, _ECHO.maxstring, _ECHO.maxother, _ECHO.maxlong = 4, ECHO_CHARS, ECHO_CHARS, ECHO_CHARS


def echo(value) -> str:
    """``value`` as quoted back in an error: a repr of at most about ECHO_CHARS characters."""
    text = _ECHO.repr(value)
    return text if len(text) <= ECHO_CHARS + 10 else text[:ECHO_CHARS] + "..."


def _cut(text: str) -> str:
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text)} characters)"


def validation_detail(errors) -> tuple[str, str | None]:
    """Pydantic errors -> one message naming each field, and the first field. Bounded: a 5 MB string
    sent as padding_mode, or 200k unknown keys, came back whole in the 422 (found by probing)."""
    parts, first = [], None
    for e in errors[:ECHO_ERRORS]:
        loc = _cut(".".join(str(p) for p in e["loc"] if p != "body"))   # an unknown key may be 300k long
        first = first or loc
        parts.append(f"{loc}: {e['msg']}" + (f" (got {echo(e['input'])})" if "input" in e and loc else ""))
    if len(errors) > ECHO_ERRORS:
        parts.append(f"and {len(errors) - ECHO_ERRORS} more errors")
    return "; ".join(parts), first


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError):
        return _json(exc.status, exc.detail, exc.field, exc.headers)

    @app.exception_handler(TensorError)
    async def _tensor(_: Request, exc: TensorError):
        return _json(exc.status, str(exc), exc.field)

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc):
        detail, field = validation_detail(exc.errors())
        return _json(422, detail, field)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException):
        return _json(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def _down(_: Request, exc: Exception):
        return _json(*backend_failure(exc))


def backend_failure(exc: Exception) -> tuple[int, str, None, dict | None]:
    """(status, message, field, headers) for a Redis or broker error: 507 when the store is full, else 503.

    The address and the driver's text go to the log only (/v1 and /v2 answer alike)."""
    if is_out_of_memory(exc):  # noeviction: nothing was stored (job writes are all-or-nothing)
        log.warning("job store full: %s", exc)
        return 507, STORE_FULL, None, None
    log.warning("backend unavailable: %s", exc)
    return 503, "the job store / broker (Redis) is unavailable; retry shortly", None, {"Retry-After": "5"}

