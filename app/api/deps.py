"""Dependencies shared by the routers: settings, job store, task sender, caller identity, size-limited body."""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect

from app.api.errors import ApiError
from app.core.config import Settings, hash_key
from app.core.tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH, parse_json, split_binary_body
from worker.store import JobStore

OPEN_OWNER = "open"
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


# The dependencies are ``async def`` although they do no I/O: FastAPI runs a plain ``def`` dependency
# in the thread pool, one hop (and GIL hand-off) each per request; these only read app state.
async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_sender(request: Request) -> Celery:
    """The Celery app the API sends tasks with (by name; it never runs them)."""
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
SenderDep = Annotated[Celery, Depends(get_sender)]


def get_owner(settings: SettingsDep,
              bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
              api_key: Annotated[str | None, Security(_api_key)] = None) -> str:
    """The caller's identity: a prefix of its key's digest, or ``open`` when no keys are configured."""
    digests = settings.key_digests
    if not digests:
        return OPEN_OWNER
    key = bearer.credentials if bearer else api_key
    if not key:
        raise ApiError(401, "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                       "Authorization", headers={"WWW-Authenticate": "Bearer"})
    digest = hash_key(key)
    match = False
    for known in digests:  # compare with every digest, in constant time each
        match |= hmac.compare_digest(digest, known)
    if not match:
        raise ApiError(403, "the API key is not valid", "Authorization")
    return digest[:32]


async def owner(settings: SettingsDep,
                bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
                api_key: Annotated[str | None, Security(_api_key)] = None) -> str:
    """``get_owner`` as a dependency: run on the event loop (a digest and a compare, no I/O) instead of
    a thread-pool hop per request, as FastAPI does for a plain ``def`` dependency."""
    return get_owner(settings, bearer, api_key)


OwnerDep = Annotated[str, Depends(owner)]


@dataclass
class Body:
    raw: bytes
    content_type: str
    header_length: str | None

    def parse(self) -> tuple[dict, bytes]:
        """(JSON document, binary part); the binary part is empty for a plain JSON body."""
        if self.content_type.startswith(BINARY_CONTENT_TYPE) or self.header_length is not None:
            if self.header_length is None:
                raise ApiError(400, f"a binary body needs the {HEADER_LENGTH} header", HEADER_LENGTH)
            return split_binary_body(self.raw, self.header_length)
        return parse_json(self.raw), b""


async def read_limited(request: Request, limit: int, what: str = "request body", hint: str = "") -> bytes:
    """The body, read in chunks and refused (413) as soon as it passes ``limit`` bytes."""
    too_big = ApiError(413, f"{what} exceeds the limit of {limit} bytes{hint}", "body")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # the declared length is not trusted: count what arrives
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:   # closed, or cut off by the server's body timeout: nobody reads a reply,
        # but it is the client's doing, not a server error (it was logged and counted as a 500)
        raise ApiError(400, f"the connection closed after {size} bytes of the {what}, before its end",
                       "body") from None
    return b"".join(chunks)


JSON_CONTENT_TYPE = "application/json"


def body_kind(request: Request) -> str:
    """"json" or "binary" from Content-Type; 415 for anything else. A browser sends a cross-site form or
    ``text/plain`` POST without asking first: requiring these types keeps such requests out."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == BINARY_CONTENT_TYPE or (request.headers.get(HEADER_LENGTH) is not None
                                               and content_type in ("", JSON_CONTENT_TYPE)):
        return "binary"
    if content_type == JSON_CONTENT_TYPE:
        return "json"
    raise ApiError(415, f"Content-Type must be {JSON_CONTENT_TYPE} (or {BINARY_CONTENT_TYPE} with the "
                        f"{HEADER_LENGTH} header for binary tensors), got {content_type or 'none'!r}", "Content-Type")


BINARY_HINT = (f"; send large arrays in the binary form (Content-Type: {BINARY_CONTENT_TYPE} with the "
               f"{HEADER_LENGTH} header, see the README)")


async def read_body_within(request: Request, settings: Settings, json_limit: int, hint: str = BINARY_HINT) -> Body:
    """The body, refused (413) as soon as it passes its limit: ``json_limit`` for JSON (parsing takes
    several times the text's size in memory), ``max_body_bytes`` for the binary form. ``hint`` ends a
    413's message (what to do instead)."""
    kind = body_kind(request)
    header_length = request.headers.get(HEADER_LENGTH)
    if kind == "json":
        limit = min(json_limit, settings.max_body_bytes)
        raw = await read_limited(request, limit, hint=hint)
        return Body(raw, JSON_CONTENT_TYPE, None)
    if header_length is not None and header_length.strip().isdigit() and int(header_length) > json_limit:
        raise ApiError(413, f"the JSON header of {header_length} bytes exceeds the limit of {json_limit} bytes",
                       HEADER_LENGTH)
    raw = await read_limited(request, settings.max_body_bytes)
    return Body(raw, BINARY_CONTENT_TYPE, header_length)


async def read_body(request: Request, settings: SettingsDep) -> Body:
    """The request body (JSON up to ``max_json_bytes``, binary up to ``max_body_bytes``), else 413/415."""
    return await read_body_within(request, settings, settings.max_json_bytes)


BodyDep = Annotated[Body, Depends(read_body)]


async def read_train_body(request: Request, settings: SettingsDep) -> Body:
    """A training spec's body: JSON up to ``max_train_spec_bytes`` (a spec is small; a huge one is refused
    before any parsing)."""
    return await read_body_within(request, settings, min(settings.max_train_spec_bytes, settings.max_json_bytes),
                                  hint="; a job spec holds no arrays (upload data with POST /v1/datasets); the "
                                       "limit is CONVND_MAX_TRAIN_SPEC_BYTES")


TrainBodyDep = Annotated[Body, Depends(read_train_body)]
