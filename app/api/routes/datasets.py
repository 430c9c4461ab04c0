"""POST /v1/datasets (an .npz with x and y, raw or multipart), GET /v1/datasets/{id}.

y holds a class per sample (n,), a class per voxel (n, d_1..d_N) or a field (n, c, d_1..d_N)
(floats); the stored info says which (target_shape, task).

The upload is counted while it is read (Content-Length is not trusted), the archive's
declared sizes are checked before anything is decompressed, and arrays are read without
pickle and validated (shapes, dtypes, finite values, labels) before they are stored.
"""
from __future__ import annotations

import io
import zipfile
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser

from app.api.deps import OwnerDep, SettingsDep, StoreDep, read_limited
from app.api.errors import ApiError
from app.core.tensors import BINARY_CONTENT_TYPE
from app.schemas.jobs import ErrorBody
from app.schemas.train import DatasetInfo
from convcore import datasets
from worker import dataset_store

router = APIRouter(prefix="/datasets", tags=["training"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 503)}
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file
MULTIPART = "multipart/form-data"


async def _file_part(request: Request, raw: bytes) -> bytes:
    """The bytes of the multipart field ``file`` (or of the only file part)."""
    async def once():
        yield raw

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=10).parse()
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body: {exc.message}", "file") from None
    part = form.get("file") or next((v for v in form.values() if hasattr(v, "read")), None)
    if part is None or not hasattr(part, "read"):
        raise ApiError(400, f"the multipart body needs a file field named 'file', got fields {sorted(form.keys())}",
                       "file")
    return await part.read()


def _check_archive(data: bytes, limit: int) -> None:
    """400 for what is not an .npz at all, 413 when it would inflate past the limit."""
    if not data:
        raise ApiError(400, "the upload is empty: send an .npz written by numpy.savez(file, x=..., y=...)", "file")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ApiError(400, "the upload is not an .npz file (not a zip archive); "
                            "write it with numpy.savez(file, x=..., y=...)", "file")
    try:
        declared = sum(info.file_size for info in zipfile.ZipFile(io.BytesIO(data)).infolist())
    except zipfile.BadZipFile as exc:
        raise ApiError(400, f"the .npz archive is damaged: {exc}", "file") from None
    if declared > limit:
        raise ApiError(413, f"the dataset is {declared} bytes uncompressed; the limit is {limit} bytes", "file")


def _upload_kind(request: Request, cors_origins: list) -> str:
    """The upload's Content-Type: raw bytes or a multipart form; 415 for anything else (text/plain, a
    url-encoded form: what a page on another site can POST without asking first, as the other body
    routes refuse). A multipart form can come from such a page too, so one whose Origin is another
    site (not the API's own, nor a configured CORS origin) is 403; curl and the client send none."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in (BINARY_CONTENT_TYPE, MULTIPART):
        raise ApiError(415, f"Content-Type must be {BINARY_CONTENT_TYPE} (the .npz's bytes) or {MULTIPART} "
                            f"(a file field named 'file'), got {kind or 'none'!r}", "Content-Type")
    origin = request.headers.get("origin")
    if kind == MULTIPART and origin is not None and _cross_site(request, origin, cors_origins):
        raise ApiError(403, f"a multipart upload from a page of another site ({origin!r}) is refused: upload "
                            f"from that site's server, or list it in CONVND_CORS_ORIGINS", "Origin")
    return kind


def _cross_site(request: Request, origin: str, cors_origins: list) -> bool:
    """Whether a browser sent this request from another site's page. The browser's own word first
    (Sec-Fetch-Site, which no proxy rewrites: a page of the API behind nginx is "same-origin" though
    nginx sends its upstream as Host); else the Origin's host against Host or X-Forwarded-Host, with
    the scheme's default port made explicit on both sides. Origins listed for CORS (or "*") may."""
    if "*" in cors_origins or origin in cors_origins:
        return False
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    parts = urlsplit(origin)
    default = {"http": 80, "https": 443}.get(parts.scheme)

    def host_port(netloc: str) -> tuple:
        split = urlsplit(f"//{netloc}")
        try:
            port = split.port
        except ValueError:   # a malformed port: matches nothing
            return (netloc, None)
        return ((split.hostname or "").lower(), port or default)

    ours = [request.headers.get("host", "")] + request.headers.get("x-forwarded-host", "").split(",")[:1]
    return host_port(parts.netloc) not in [host_port(h.strip()) for h in ours if h.strip()]


@router.post("", status_code=201, response_model=DatasetInfo, responses=ERRORS,
             summary="upload an .npz with x (n, c, d_1..d_N) and y: (n,) class labels, (n, d_1..d_N) "
                     "per-voxel labels or (n, c, d_1..d_N) a field",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "file": {"type": "string", "format": "binary"}}, "required": ["file"]}}}}})
async def upload(request: Request, owner: OwnerDep, store: StoreDep, settings: SettingsDep) -> dict:
    limit = settings.max_dataset_bytes
    multipart = _upload_kind(request, settings.cors_origins) == MULTIPART
    raw = await read_limited(request, limit + (MULTIPART_SLACK if multipart else 0))
    data = await _file_part(request, raw) if multipart else raw
    if len(data) > limit:
        raise ApiError(413, f"the upload exceeds the limit of {limit} bytes", "file")
    _check_archive(data, limit)
    try:  # decoding and storing up to the limit: off the event loop
        x, y, n_classes = await run_in_threadpool(datasets.load_npz_bytes, data, limit)
    except datasets.DatasetError as exc:  # names the array and the values
        raise ApiError(422, str(exc), "file") from None
    return await run_in_threadpool(dataset_store.put_dataset, store, owner, x, y, n_classes, settings.dataset_ttl_s)


@router.get("/{dataset_id}", response_model=DatasetInfo, responses=ERRORS, summary="an uploaded dataset's shape")
def info(dataset_id: str, owner: OwnerDep, store: StoreDep) -> dict:
    found = dataset_store.dataset_info(store, dataset_id, owner)
    if found is None:
        raise ApiError(404, f"no dataset {dataset_id!r} (unknown, expired or not yours)", "id")
    return found
