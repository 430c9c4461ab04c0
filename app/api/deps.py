"""Dependencies shared by the routers: settings, job store, caller identity, size-limited body."""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.errors import ApiError
from app.core.config import Settings, hash_key
from app.core.tensors import BINARY_CONTENT_TYPE, HEADER_LENGTH, parse_json, split_binary_body
from app.jobs.store import JobStore

OPEN_OWNER = "open"
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]


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


OwnerDep = Annotated[str, Depends(get_owner)]


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


async def read_limited(request: Request, limit: int, what: str = "request body") -> bytes:
    """The body, read in chunks and refused (413) as soon as it passes ``limit`` bytes."""
    too_big = ApiError(413, f"{what} exceeds the limit of {limit} bytes", "body")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # the declared length is not trusted: count what arrives
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, settings: SettingsDep) -> Body:
    """The request body, refused (413) as soon as it passes ``max_body_bytes``."""
    raw = await read_limited(request, settings.max_body_bytes)
    return Body(raw, request.headers.get("content-type", ""), request.headers.get(HEADER_LENGTH))


BodyDep = Annotated[Body, Depends(read_body)]
