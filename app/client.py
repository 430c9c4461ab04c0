"""Python client of the convnd service (httpx), used by the ``convnd train|jobs|model`` commands.

    from app.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as c:
        job = c.train(json.load(open("examples/digits-2d.json")))
        for kind, view in c.events(job["id"]):      # "progress" ... then "end"
            print(view["state"], view["progress"].get("fraction"))
        c.save_model(job["id"], "model.npz")
        c.predict(job["id"], x)["classes"]          # x (n, *input_shape): a class per sample or per voxel
        c.predict(job["id"], x, binary=True)        # the same, arrays as raw bytes both ways
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import numpy as np

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
HEADER_LENGTH = "Inference-Header-Content-Length"


class ClientError(Exception):
    """An error answer of the service: status, detail and the field it names."""

    def __init__(self, status: int, detail: str, field: str | None = None):
        super().__init__(f"{status}: {detail}" + (f" (field {field})" if field else ""))
        self.status, self.detail, self.field = status, detail, field


def _id(value: str) -> str:
    """A job or model id as one path segment: '?', '#' and '/' escaped (unescaped, 'model ?x' asked
    for another path and saved an empty answer as the model). An empty id is refused here, and so are
    '.' and '..', which no escaping keeps a segment: URLs resolve them (job('.') listed every job)."""
    if not isinstance(value, str) or not value or value in (".", ".."):
        raise ValueError(f"a job id must be a non-empty string other than '.' and '..', got {value!r}")
    return quote(value, safe="")


def _tensor(a: np.ndarray) -> dict:
    a = np.asarray(a)
    datatype = "FP64" if a.dtype == np.float64 else "FP32"
    return {"shape": list(a.shape), "datatype": datatype, "data": a.astype(DATATYPES[datatype]).ravel().tolist()}


def _array(t: dict) -> np.ndarray:
    return np.asarray(t["data"], dtype=DATATYPES[t["datatype"]]).reshape(t["shape"])


def _binary_body(doc: dict, arrays: dict) -> tuple[bytes, int]:
    """(JSON header + raw little-endian blobs, header length): the binary-data extension's request."""
    header, blobs = dict(doc), []
    for name, a in arrays.items():
        a = np.asarray(a)
        datatype = "FP64" if a.dtype == np.float64 else "FP32"
        raw = np.ascontiguousarray(a, dtype=np.dtype(DATATYPES[datatype]).newbyteorder("<")).tobytes()
        header[name] = {"shape": list(a.shape), "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
        blobs.append(raw)
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def _binary_answer(content: bytes, header_length: str) -> dict:
    """A binary-data answer -> its JSON header with every tensor replaced by an ndarray."""
    n = int(header_length)
    doc, offset = json.loads(content[:n]), n
    for key, value in doc.items():
        size = (value.get("parameters") or {}).get("binary_data_size") if isinstance(value, dict) else None
        if size is not None:
            dtype = np.dtype(DATATYPES[value["datatype"]]).newbyteorder("<")
            doc[key] = np.frombuffer(content[offset:offset + size], dtype=dtype).reshape(value["shape"])
            offset += size
    return doc


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0):
        if api_key and not (api_key.isascii() and api_key.isprintable()):   # HTTP headers carry ASCII text only
            raise ValueError("the API key must be printable ASCII: it goes in an HTTP header, which carries "
                             "no other text")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        if not 200 <= r.status_code < 300:   # a redirect is not an answer of this service either
            self._raise_for(r)
        return r

    def _doc(self, method: str, path: str, *keys: str, **kw) -> dict:
        """A 2xx answer's JSON object, holding ``keys``; ClientError when it is not one (another server
        at --url answering 200: its page or its own JSON was a JSONDecodeError or a KeyError here)."""
        r = self._call(method, path, **kw)
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            why = "not a JSON object"
        elif any(key not in doc for key in keys):
            why = "no " + ", ".join(key for key in keys if key not in doc)
        else:
            return doc
        raise ClientError(r.status_code, f"the answer of {r.request.method} {r.request.url} is not this service's "
                                         f"({why}): {r.text[:200]!r}; is the URL a convnd API?")

    # jobs
    def train(self, job: dict) -> dict:
        """Queue a training job (the content of a job file); returns its view (id, state, links)."""
        return self._doc("POST", "/v1/train", "id", json=job)

    def job(self, job_id: str) -> dict:
        return self._doc("GET", f"/v1/jobs/{_id(job_id)}", "id")

    def jobs(self, limit: int = 100) -> list[dict]:
        return self._doc("GET", "/v1/jobs", "jobs", params={"limit": limit})["jobs"]

    def cancel(self, job_id: str) -> dict:
        return self._doc("DELETE", f"/v1/jobs/{_id(job_id)}", "id")

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """(event, job view) from the server-sent event stream, until the job ends."""
        with self.http.stream("GET", f"/v1/jobs/{_id(job_id)}/events", timeout=httpx.Timeout(60, read=None)) as r:
            if r.status_code >= 400:
                r.read()
                self._raise_for(r)
            kind, data = "message", []
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:  # a blank line ends an event
                    yield kind, json.loads("\n".join(data))
                    kind, data = "message", []

    def _raise_for(self, r: httpx.Response) -> None:
        """ClientError from an error answer; its detail from the JSON body when it has one (a proxy or
        another server answers in its own form: the text, cut)."""
        try:
            body = r.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            raise ClientError(r.status_code, str(body.get("detail", r.text[:500])), body.get("field"))
        raise ClientError(r.status_code, r.text[:500] or r.reason_phrase)

    # models and data
    def model_bytes(self, job_id: str) -> bytes:
        """The .npz of the job's latest model (parameters + spec; ``convcore.nn.io.load`` reads it)."""
        return self._call("GET", f"/v1/jobs/{_id(job_id)}/model").content

    def save_model(self, job_id: str, path) -> int:
        data = self.model_bytes(job_id)
        with open(path, "wb") as f:
            f.write(data)
        return len(data)

    def upload_dataset(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Upload x (n, c, d_1..d_N) and y: (n,) class labels, (n, d_1..d_N) per-voxel labels or
        (n, c, d_1..d_N) a field (floats); returns the dataset's info with its ``id`` and ``task``."""
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        return self._doc("POST", "/v1/datasets", "id", content=buf.getvalue(),
                         headers={"Content-Type": "application/octet-stream"})

    def predict(self, model_id: str, x: np.ndarray, binary: bool = False) -> dict:
        """{"task", "outputs": ndarray (n, *output_shape), "classes": int64 ndarray (n,) or (n, d...) (class
        targets), "probabilities": ndarray (cross_entropy / dice), "predictions": [...] (classifiers), ...}.

        ``binary``: x goes and the arrays come back as raw bytes (no JSON number lists: large volumes)."""
        path = f"/v1/models/{_id(model_id)}/predict"
        if binary:
            content, n = _binary_body({"binary_data_output": True}, {"x": x})
            r = self._call("POST", path, content=content, headers={"Content-Type": "application/octet-stream",
                                                                    HEADER_LENGTH: str(n)})
            if HEADER_LENGTH in r.headers:
                return _binary_answer(r.content, r.headers[HEADER_LENGTH])
            return r.json()  # 202: the job is still running
        doc = self._doc("POST", path, json={"x": _tensor(x)})
        for key in ("outputs", "classes", "probabilities"):
            if isinstance(doc.get(key), dict):
                doc[key] = _array(doc[key])
        return doc
