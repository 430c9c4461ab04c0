"""Python client of the convnd service (httpx), used by the ``convnd train|jobs|model`` commands.

    from app.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as c:
        job = c.train(json.load(open("examples/digits-2d.json")))
        for kind, view in c.events(job["id"]):      # "progress" ... then "end"
            print(view["state"], view["progress"].get("fraction"))
        c.save_model(job["id"], "model.npz")
        c.predict(job["id"], x)["predictions"]      # x (n, *input_shape)
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import numpy as np

DATATYPES = {"FP32": np.float32, "FP64": np.float64}


class ClientError(Exception):
    """An error answer of the service: status, detail and the field it names."""

    def __init__(self, status: int, detail: str, field: str | None = None):
        super().__init__(f"{status}: {detail}" + (f" (field {field})" if field else ""))
        self.status, self.detail, self.field = status, detail, field


def _tensor(a: np.ndarray) -> dict:
    a = np.asarray(a)
    datatype = "FP64" if a.dtype == np.float64 else "FP32"
    return {"shape": list(a.shape), "datatype": datatype, "data": a.astype(DATATYPES[datatype]).ravel().tolist()}


def _array(t: dict) -> np.ndarray:
    return np.asarray(t["data"], dtype=DATATYPES[t["datatype"]]).reshape(t["shape"])


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0):
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
        if r.status_code >= 400:
            try:
                body = r.json()
                raise ClientError(r.status_code, body.get("detail", r.text), body.get("field"))
            except ValueError:
                raise ClientError(r.status_code, r.text) from None
        return r

    # jobs
    def train(self, job: dict) -> dict:
        """Queue a training job (the content of a job file); returns its view (id, state, links)."""
        return self._call("POST", "/v1/train", json=job).json()

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, limit: int = 100) -> list[dict]:
        return self._call("GET", "/v1/jobs", params={"limit": limit}).json()["jobs"]

    def cancel(self, job_id: str) -> dict:
        return self._call("DELETE", f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """(event, job view) from the server-sent event stream, until the job ends."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(60, read=None)) as r:
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
        body = r.json()
        raise ClientError(r.status_code, body.get("detail", r.text), body.get("field"))

    # models and data
    def model_bytes(self, job_id: str) -> bytes:
        """The .npz of the job's latest model (parameters + spec; ``convcore.nn.io.load`` reads it)."""
        return self._call("GET", f"/v1/jobs/{job_id}/model").content

    def save_model(self, job_id: str, path) -> int:
        data = self.model_bytes(job_id)
        with open(path, "wb") as f:
            f.write(data)
        return len(data)

    def upload_dataset(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Upload x (n, c, d_1..d_N) and y (n,) labels; returns the dataset's info with its ``id``."""
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        return self._call("POST", "/v1/datasets", content=buf.getvalue(),
                          headers={"Content-Type": "application/octet-stream"}).json()

    def predict(self, model_id: str, x: np.ndarray) -> dict:
        """{"predictions": [...], "outputs": ndarray, "probabilities": ndarray or None, ...}."""
        doc = self._call("POST", f"/v1/models/{model_id}/predict", json={"x": _tensor(x)}).json()
        for key in ("outputs", "probabilities"):
            if isinstance(doc.get(key), dict):
                doc[key] = _array(doc[key])
        return doc
