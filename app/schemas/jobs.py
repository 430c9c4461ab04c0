"""Job views returned by /v1/jobs and by 202 answers."""
from __future__ import annotations

from pydantic import BaseModel, Field


class JobView(BaseModel):
    id: str
    kind: str
    state: str = Field(..., description="queued, running, succeeded, failed or cancelled")
    progress: dict | None = None
    params: dict | None = Field(None, description="the job's parameters as submitted and checked (its spec)")
    timings: dict = Field(..., description="created_at, started_at, finished_at (epoch s), queued_s, run_s")
    error: dict | None = Field(None, description="status, type and message of a failed job")
    result: dict | None = Field(None, description="metadata of a finished job (arrays at /result)")
    lane: str = Field("celery", description="how the job reached its worker: `celery` (a task on its device's "
                                            "queue) or `fast` (a small job taken by a worker thread, no Celery "
                                            "message: docs/architecture.md)")
    links: dict


class JobList(BaseModel):
    jobs: list[JobView]


class ErrorBody(BaseModel):
    detail: str
    field: str | None = None


def job_view(job: dict, base: str = "/v1/jobs") -> dict:
    """Store record -> JobView dict."""
    created, started, finished = job["created_at"], job["started_at"], job["finished_at"]
    timings = {"created_at": created, "started_at": started, "finished_at": finished,
               "queued_s": (started - created) if started else None,
               "run_s": (finished - started) if finished and started else None}
    return {"id": job["id"], "kind": job["kind"], "state": job["state"], "progress": job["progress"],
            "params": job["params"], "timings": timings, "error": job["error"], "result": job["result"],
            "lane": job.get("lane") or "celery",
            "links": {"self": f"{base}/{job['id']}", "result": f"{base}/{job['id']}/result"}}
