"""Every failure is JSON ``{"detail": message, "field": name-or-null}`` with the right status."""
from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from app.core.tensors import TensorError

log = logging.getLogger("convnd.api")


class ApiError(Exception):
    """An error answer: status, message and the field it is about."""

    def __init__(self, status: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers


def _json(status: int, detail: str, field: str | None = None, headers=None, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field, **extra}, status_code=status, headers=headers)


def validation_detail(errors) -> tuple[str, str | None]:
    """Pydantic errors -> one message naming each field, and the first field."""
    parts, first = [], None
    for e in errors:
        loc = ".".join(str(p) for p in e["loc"] if p != "body")
        first = first or loc
        parts.append(f"{loc}: {e['msg']}" + (f" (got {e['input']!r})" if "input" in e and loc else ""))
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
        log.warning("backend unavailable: %s", exc)
        return _json(503, f"the job store / broker (Redis) is unavailable: {exc}")
