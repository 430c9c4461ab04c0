"""Errors of the v2 endpoints in the protocol's form: ``{"error": message}`` with a 4xx (or 503).

The /v1 handlers answer ``{"detail", "field"}``; a v2 route catches the same exceptions itself
(its dependencies' too: keys, body size) and answers them the v2 way. The protocol has no 422:
what /v1 refuses with 422 (a well-formed request with impossible values) is a 400 here.
"""
from __future__ import annotations

import logging

import redis
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from app.api.errors import ApiError, backend_failure, validation_detail
from app.core.tensors import HEADER_LENGTH, TensorError, UnencodableOutput

log = logging.getLogger("convnd.api")


def v2_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400 if status == 422 else status, headers=headers)


def as_v2_error(exc: Exception) -> JSONResponse | None:
    """The v2 answer for an exception the /v1 handlers would answer, or None for any other."""
    if isinstance(exc, ApiError):  # its message names the field
        return v2_error(exc.status, exc.detail, exc.headers)
    if isinstance(exc, TensorError):
        # else the body or its header length, or an output JSON cannot carry
        about_input = exc.field not in ("body", HEADER_LENGTH) and not isinstance(exc, UnencodableOutput)
        return v2_error(exc.status, f"input {exc}" if about_input else str(exc))
    if isinstance(exc, (ValidationError, RequestValidationError)):
        return v2_error(400, validation_detail(exc.errors())[0])
    if isinstance(exc, HTTPException):
        return v2_error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))
    if isinstance(exc, (redis.RedisError, OperationalError)):  # 507 store full / 503, no internals
        status, message, _, headers = backend_failure(exc)
        return v2_error(status, message, headers)
    return None


class V2Route(APIRoute):
    """An APIRoute whose errors (from the endpoint or its dependencies) are v2 error bodies."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def v2_handler(request):
            try:
                return await handler(request)
            except Exception as exc:  # what as_v2_error does not know goes on to the app's handlers
                answer = as_v2_error(exc)
                if answer is None:
                    raise
                return answer

        return v2_handler
