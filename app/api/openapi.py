"""The OpenAPI document says what the service answers: FastAPI's generated schema, completed.

- 422 bodies are our ``ErrorBody`` (errors.py turns validation errors into it), not FastAPI's
  ``HTTPValidationError``.
- Answers any route can give are listed on every route: 400 (Host check), 500 (catch-all);
  on a route that reads a body: 413 (too large), 415 (not JSON / binary); on /v1: 401/403 (keys),
  503 (Redis down); on a POST that stores a job: 507 (job store full).
- GET /v1/jobs/{id}/result documents its binary form (``application/octet-stream``).
"""
from __future__ import annotations

from fastapi import FastAPI

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_DESCRIPTIONS = {400: "Malformed request (or Host header not allowed)", 401: "API key required",
                 403: "API key not valid", 413: "Request body or an array too large",
                 415: "Content-Type must be application/json or application/octet-stream",
                 422: "Invalid parameters (the field is named)", 500: "Internal error (logged; no details)",
                 503: "Job store / broker unavailable, or no worker", 507: "Job store full"}


def _error(status: int) -> dict:
    return {"description": _DESCRIPTIONS[status], "content": {"application/json": {"schema": ERROR_REF}}}


def _complete(path: str, method: str, op: dict) -> None:
    responses = op.setdefault("responses", {})
    wanted = {400, 500}
    if "requestBody" in op:
        wanted |= {413, 415, 422}
    if path.startswith("/v1/"):
        wanted |= {401, 403, 503}
        if method == "post":
            wanted.add(507)
    if op.get("parameters") or "requestBody" in op:
        wanted.add(422)
    for status in sorted(wanted):
        responses.setdefault(str(status), _error(status))
    if "422" in responses:  # FastAPI's own HTTPValidationError is never what we send
        content = responses["422"].setdefault("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        if schema.get("$ref", "").endswith("/HTTPValidationError") or not content:
            responses["422"] = _error(422)


def complete(schema: dict) -> dict:
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            if isinstance(op, dict) and "responses" in op:
                _complete(path, method, op)
    result = schema.get("paths", {}).get("/v1/jobs/{job_id}/result", {}).get("get")
    if result:
        ok = result["responses"].setdefault("200", {"description": "The result"}).setdefault("content", {})
        ok.setdefault("application/octet-stream", {"schema": {"type": "string", "format": "binary"}, "description":
                      "with ?binary_data_output=true or Accept: application/octet-stream: a JSON header of "
                      "Inference-Header-Content-Length bytes, then the arrays' raw little-endian bytes"})
    components = schema.get("components", {}).get("schemas", {})
    text = str(schema.get("paths"))
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in components and f"/{unused}'" not in text:
            components.pop(unused)
    if "ValidationError" in components and "HTTPValidationError" not in components:
        components.pop("ValidationError")
    return schema


def install(app: FastAPI) -> None:
    """``app.openapi()`` returns the completed document (built once)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate())
        return app.openapi_schema

    app.openapi = openapi
