"""Jobs in Redis: one hash per job, arrays as raw bytes under job-scoped keys, all with a TTL.

Generic on purpose: a job is (kind, owner, params, input arrays) -> (state, progress,
result, output arrays), so convolution calls and training runs share it.

Keys (``p`` = settings.key_prefix; checkpoints, leases and datasets add theirs in
``worker.checkpoints``, ``worker.lease`` and ``worker.dataset_store``):
    p:job:<id>            hash: id kind owner state created_at started_at finished_at
                          params progress result error worker cancel_requested
    p:job:<id>:in:<name>  hash: dtype shape data (``worker.codec``: raw little-endian bytes)
    p:job:<id>:out:<name> same, for results
    p:job:<id>:done       list: one item pushed when the job reaches a final state
    p:owner:<owner>:jobs  sorted set of job ids by creation time
    p:workers             sorted set of worker ids scored by heartbeat expiry
    p:worker:<id>         JSON heartbeat of a live worker (expires when it stops)
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis

from . import codec
from . import store_scripts as scripts

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
_JSON_FIELDS = ("params", "progress", "result", "error")

# Longest single BLPOP of ``wait``: a blocking read must end before the client's socket timeout
# (redis-py 8 defaults to 5 s), or a long wait would fail as a Redis error instead of running out.
WAIT_SLICE_S = 2.0


@dataclass
class Claim:
    """A job a worker has just taken (``JobStore.claim``)."""
    attempt: int       # deliveries so far, this one included
    job: dict          # the record, as ``get`` returns it
    raw_inputs: dict   # name -> stored hash fields (decoded by ``inputs``)

    def inputs(self) -> dict:
        """{name: ndarray} of the stored inputs (missing ones are left out); CodecError if damaged."""
        return {name: codec.decode(raw) for name, raw in self.raw_inputs.items() if raw}


class JobStore:
    """Job records and their arrays in Redis (a ``redis.Redis`` with bytes responses)."""

    def __init__(self, redis, prefix: str = "convnd", ttl_s: int = 86400):
        self.r, self.prefix, self.ttl = redis, prefix, int(ttl_s)
        self._cas = redis.register_script(scripts.CAS)
        self._claim = redis.register_script(scripts.CLAIM)
        self._finish = redis.register_script(scripts.FINISH)
        self._finish_stepwise = redis.register_script(scripts.FINISH_STEPWISE)
        self._workers = redis.register_script(scripts.WORKERS)
        self._create_script = redis.register_script(scripts.CREATE)
        self._read = redis.register_script(scripts.READ)

    # keys
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def array_key(self, job_id: str, role: str, name: str) -> str:
        return f"{self.prefix}:job:{job_id}:{role}:{name}"

    def _done_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:done"

    def _owner_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:jobs"

    # records
    def create(self, kind: str, owner: str, params: dict, arrays: dict | None = None) -> dict:
        """Store a new ``queued`` job with its input arrays; returns its record as written (what ``get``
        would have returned then: a later ``get`` may already see it running or finished)."""
        return self._create(kind, owner, params, arrays, read_workers=False)[0]

    def create_reading_workers(self, kind: str, owner: str, params: dict, arrays: dict | None = None,
                               push: tuple[str, str] | None = None,
                               fields: dict | None = None) -> tuple[dict, list[dict]]:
        """``create`` and ``workers`` in one round trip: (record, live workers' info). A caller that
        finds no worker for the job ``discard``s it. ``push`` = (list key, entry prefix): the entry
        prefix + the job id is pushed on that list in the same step (queueing the job on a route known
        beforehand); ``fields``: more fields of the record."""
        return self._create(kind, owner, params, arrays, read_workers=True, push=push, fields=fields)

    def _create(self, kind, owner, params, arrays, read_workers: bool, push=None,
                fields=None) -> tuple[dict, list[dict] | None]:
        job_id = uuid.uuid4().hex
        now = time.time()
        record = {"id": job_id, "kind": kind, "owner": owner, "state": "queued", "created_at": repr(now),
                  "params": json.dumps(params), "progress": "{}", "cancel_requested": "0",
                  "inputs": ",".join(name for name, arr in (arrays or {}).items() if arr is not None),
                  **(fields or {})}
        # One script (store_scripts.CREATE): a write refused at the memory limit leaves no half-written job.
        list_key, entry = push if push is not None else (self.job_key(job_id), None)
        args = [job_id, repr(now), self.ttl, repr(now - self.ttl), "1" if read_workers else "0",
                "" if entry is None else entry + job_id, f"{self.prefix}:worker:", len(record)]
        for key, value in record.items():
            args += [key, value]
        stored = [(name, codec.encode(arr)) for name, arr in (arrays or {}).items() if arr is not None]
        args.append(len(stored))
        for name, enc in stored:
            args += [name, enc["dtype"], enc["shape"], enc["data"]]
        values = self._create_script(keys=[self.job_key(job_id), self._owner_key(owner), f"{self.prefix}:workers",
                                           list_key], args=args)
        workers = [json.loads(v) for v in values if v] if read_workers else None
        return _record(record), workers

    def discard(self, job: dict) -> None:
        """Delete a job that was created but never queued (no worker serves it): record, inputs, listing."""
        job_id = job["id"]
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(self.job_key(job_id), *(self.array_key(job_id, "in", n) for n in job["inputs"].split(",") if n))
        pipe.zrem(self._owner_key(job["owner"]), job_id)
        pipe.execute()

    def get(self, job_id: str, owner: str | None = None) -> dict | None:
        """The job record, or None when it is unknown, expired or (with ``owner``) someone else's."""
        raw = self.r.hgetall(self.job_key(job_id))
        if not raw:
            return None
        job = {k.decode(): v.decode() for k, v in raw.items()}
        if owner is not None and job.get("owner") != owner:
            return None
        return _record(job)

    def list_ids(self, owner: str, limit: int = 100) -> list[str]:
        """Newest first."""
        return [j.decode() for j in self.r.zrevrange(self._owner_key(owner), 0, limit - 1)]

    # state
    def transition(self, job_id: str, to: str, allowed: tuple, **fields) -> bool:
        """Set state ``to`` (and JSON-able ``fields``) only if the state is in ``allowed``."""
        assert to in STATES
        args = [f",{','.join(allowed)},", "state", to]
        for k, v in fields.items():
            args += [k, json.dumps(v) if k in _JSON_FIELDS else str(v)]
        return bool(self._cas(keys=[self.job_key(job_id)], args=args))

    def start(self, job_id: str, worker: str) -> bool:
        return self.transition(job_id, "running", ("queued", "running"), started_at=repr(time.time()),
                               worker=worker)

    def claim(self, job_id: str, worker: str, inputs) -> Claim | None:
        """``start`` + ``count_attempt`` + ``get`` + the input arrays ``inputs``, atomically, in one
        round trip; None when the job has ended (cancelled before it started) or expired."""
        inputs = list(inputs)
        keys = [self.job_key(job_id)] + [self.array_key(job_id, "in", n) for n in inputs]
        out = self._claim(keys=keys, args=[repr(time.time()), worker])
        if out is None:
            return None
        attempt, flat, raws = out[0], out[1], out[2:]
        job = _record({flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)})
        raw_inputs = {name: dict(zip(raw[::2], raw[1::2])) for name, raw in zip(inputs, raws)}
        return Claim(int(attempt), job, raw_inputs)

    def count_attempt(self, job_id: str) -> int | None:
        """One more delivery of the job; its count, or None when the job has expired."""
        attempt = self.r.hincrby(self.job_key(job_id), "attempts", 1)
        if self.r.ttl(self.job_key(job_id)) < 0:  # expired just now: HINCRBY made a bare hash
            self.r.delete(self.job_key(job_id))
            return None
        return attempt

    def set_progress(self, job_id: str, **progress) -> bool:
        """Record progress of a running job (never recreates an expired one)."""
        return self.transition(job_id, "running", ("running",), progress=progress)

    def finish(self, job_id: str, state: str, result: dict | None = None, error: dict | None = None,
               arrays: dict | None = None, **extra) -> bool:
        """Move a queued/running job to a final state, storing its outputs; wakes waiters.

        One script (``store_scripts.FINISH``) in the usual case. Outputs expire with the job record (whose TTL
        the API that created it chose).
        """
        assert state in FINAL
        fields = _final_fields(result, error, extra)
        outputs = []
        for name, arr in (arrays or {}).items():
            if arr is not None:
                enc = codec.encode(arr)
                outputs += [name, enc["dtype"], enc["shape"], enc["data"]]
        try:
            return bool(self._finish(keys=[self.job_key(job_id), self.prefix],
                                     args=[",queued,running,", state, len(outputs) // 4, *outputs, *fields]))
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
        return self._finish_at_memory_limit(job_id, state, result, error, arrays, extra)

    def _finish_at_memory_limit(self, job_id, state, result, error, arrays, extra) -> bool:
        """``finish`` when the store was full as it started: drop the inputs first (DEL is allowed at
        the limit), then store all outputs or none (a 507 failure when they still do not fit)."""
        self.drop_inputs(job_id)
        if arrays:
            ttl = self.r.ttl(self.job_key(job_id))
            if ttl <= 0:
                return False  # expired meanwhile: nobody can fetch the outputs
            pipe = self.r.pipeline(transaction=True)  # all outputs or none
            self._put_arrays(pipe, job_id, "out", arrays, ttl)
            try:
                pipe.execute()
            except redis.ResponseError as exc:
                if not is_out_of_memory(exc):
                    raise
                state, result, error = "failed", None, {
                    "status": 507, "type": "StoreFull", "message": "the result does not fit in the job store "
                    "(its memory limit is reached); retry later or ask for a smaller output"}
        fields = _final_fields(result, error, extra)
        return bool(self._finish_stepwise(keys=[self.job_key(job_id), self.prefix],
                                          args=[",queued,running,", state, 0, *fields]))

    def fail_if_overdue(self, job: dict, limit_s: float) -> dict:
        """A job still ``running`` ``limit_s`` after it started lost its task (hard time limit, lost
        worker without redelivery): end it ``failed`` so it is not shown running forever."""
        if job["state"] == "running" and job.get("started_at") and time.time() - job["started_at"] > limit_s:
            self.finish(job["id"], "failed", error={
                "status": 504, "type": "Lost", "message": f"the job was still running {limit_s:.0f} s after it "
                "started, past its hard time limit: its task was killed or its worker lost"})
            return self.get(job["id"]) or job
        return job

    def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not ended; a running one sees ``cancel_requested`` and may stop early."""
        return self.finish(job_id, "cancelled", error={"status": 409, "type": "Cancelled",
                                                       "message": "cancelled by the user"}, cancel_requested="1")

    def drop_inputs(self, job_id: str) -> None:
        """Delete the job's input arrays (DEL is allowed even at the memory limit)."""
        names = self.r.hget(self.job_key(job_id), "inputs")
        if names:
            self.r.delete(*(self.array_key(job_id, "in", n) for n in names.decode().split(",")))

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(self.job_key(job_id), "cancel_requested") == b"1"

    def wait(self, job_id: str, timeout_s: float) -> bool:
        """Block until the job reaches a final state (True) or ``timeout_s`` passes (False).

        Blocks in slices shorter than the client's socket timeout, so a wait of any length runs
        out as False rather than as a socket timeout."""
        deadline = time.monotonic() + timeout_s
        slice_s = self._wait_slice_s()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # BLPOP takes fractional seconds; 0 would mean "forever", hence the floor.
            if self.r.blpop([self._done_key(job_id)], timeout=max(min(left, slice_s), 0.01)) is not None:
                return True

    def wait_outcome(self, job_id: str, timeout_s: float, outputs: bool = True) -> tuple[dict | None, dict]:
        """``wait``, then (the record or None when unknown/expired, {name: ndarray} of a succeeded job's
        outputs when ``outputs``), read in the same round trip as the wait's last BLPOP."""
        deadline = time.monotonic() + timeout_s
        slice_s = self._wait_slice_s()
        read_args = (self._read.sha, 1, self.job_key(job_id), "1" if outputs else "0")
        while True:
            left = deadline - time.monotonic()
            pipe = self.r.pipeline(transaction=False)
            if left > 0:
                pipe.blpop([self._done_key(job_id)], timeout=max(min(left, slice_s), 0.01))
            pipe.evalsha(*read_args)  # runs once the BLPOP has returned (commands run in order)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies[:-1]:
                if isinstance(reply, Exception):
                    raise reply
            if left <= 0 or replies[0] is not None:
                read = replies[-1]
                if isinstance(read, redis.exceptions.NoScriptError):  # a restarted server: load it
                    read = self._read(keys=[self.job_key(job_id)], args=[read_args[-1]])
                elif isinstance(read, Exception):
                    raise read
                return _parse_read(read)

    def _wait_slice_s(self) -> float:
        socket_timeout = self.r.connection_pool.connection_kwargs.get("socket_timeout")
        return min(WAIT_SLICE_S, socket_timeout / 2) if socket_timeout else WAIT_SLICE_S

    # arrays
    def _put_arrays(self, pipe, job_id: str, role: str, arrays: dict, ttl: int | None = None) -> None:
        for name, arr in arrays.items():
            if arr is None:
                continue
            key = self.array_key(job_id, role, name)
            pipe.hset(key, mapping=codec.encode(arr))
            pipe.expire(key, ttl or self.ttl)

    def get_arrays(self, job_id: str, role: str, names) -> dict:
        """{name: ndarray} for the stored arrays among ``names`` (missing ones are left out)."""
        pipe = self.r.pipeline(transaction=False)
        names = list(names)
        for name in names:
            pipe.hgetall(self.array_key(job_id, role, name))
        out = {}
        for name, raw in zip(names, pipe.execute()):
            if raw:
                out[name] = codec.decode(raw)
        return out

    # workers: a sorted set of ids scored by expiry, plus one info key each (no SCAN of the keyspace)
    def heartbeat(self, worker_id: str, info: dict, ttl_s: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.set(f"{self.prefix}:worker:{worker_id}", json.dumps(info), px=int(ttl_s * 1000))
        pipe.zadd(f"{self.prefix}:workers", {worker_id: time.time() + ttl_s})
        pipe.execute()

    def forget_worker(self, worker_id: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(f"{self.prefix}:worker:{worker_id}")
        pipe.zrem(f"{self.prefix}:workers", worker_id)
        pipe.execute()

    def workers(self) -> list[dict]:
        """Info of every worker whose heartbeat has not expired."""
        values = self._workers(keys=[f"{self.prefix}:workers"], args=[time.time(), f"{self.prefix}:worker:"])
        return [json.loads(v) for v in values if v]


def is_out_of_memory(exc: Exception) -> bool:
    """Redis refused a write at its ``maxmemory`` (policy noeviction): "OOM command not allowed ..."."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "used memory > 'maxmemory'" in str(exc))


def _parse_read(read: list) -> tuple[dict | None, dict]:
    flat = read[0]
    if not flat:
        return None, {}
    job = _record({flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)})
    arrays = {}
    for name, raw in zip(read[1::2], read[2::2]):
        if raw:
            arrays[name.decode()] = codec.decode(dict(zip(raw[::2], raw[1::2])))
    return job, arrays


def _final_fields(result: dict | None, error: dict | None, extra: dict) -> list:
    """The field/value pairs a final state writes on the record (JSON fields encoded)."""
    fields = {"finished_at": repr(time.time()), **extra}
    if result is not None:
        fields["result"] = result
    if error is not None:
        fields["error"] = error
    out = []
    for k, v in fields.items():
        out += [k, json.dumps(v) if k in _JSON_FIELDS else str(v)]
    return out


def _record(fields: dict) -> dict:
    """Stored string fields -> the job record (JSON fields parsed, times as floats)."""
    job = dict(fields)
    for field in _JSON_FIELDS:
        job[field] = json.loads(job[field]) if job.get(field) else None
    for field in ("created_at", "started_at", "finished_at"):
        job[field] = float(job[field]) if job.get(field) else None
    job["cancel_requested"] = job.get("cancel_requested") == "1"
    return job
