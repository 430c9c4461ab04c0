"""The fast lane: small forward and backward jobs taken from a Redis list by one thread in each worker
process, without Celery's message path.

Why: on the 2-core benchmark machine Celery takes 2.4-4.4 ms from ``send_task`` to the start of a task
that does nothing (docs/benchmarks.md, "The service"), several times a small convolution; a thread
blocked in BLMOVE on the same server wakes in a fraction of that. Large jobs, gradchecks and training
keep Celery's path (time limits that kill a child, revocation); a fast-lane job is bounded by
``fast_lane_max_madds`` when the API sends it, so it ends within milliseconds.

Keys (p: the key prefix, q: the queue of the worker's device, as Celery's):

  p:fast:q               list of waiting entries ``<kind>:<job id>`` (the API RPUSHes, threads BLMOVE the head)
  p:fast:q:taken:<wid>   the entries worker process <wid> has taken and not yet finished
  p:fast:q:takers        worker ids that may hold taken entries

A process that dies holding an entry (killed, out of memory, the hard time limit of a Celery task beside
it) leaves it in its taken list. Any live worker of the queue moves it back to the head of the list
(``SWEEP``) once the dead one's heartbeat key has been missing at two of its sweeps in a row (one every
``worker_liveness_s``), and only while its own heartbeat key exists: after a Redis restart every key
has expired at once, and live workers need a heartbeat to write theirs again. The claim counts that
delivery, so a job that keeps killing its worker fails as WorkerLost after ``max_attempts``, exactly
as a Celery redelivery does (``worker.jobrun``).

Every worker process runs the thread, whatever its ``fast_lane_max_madds``: a worker's bound is only
what its heartbeat offers the API (0: nothing), so entries left on a lane by workers that are gone
are still run by the ones that replaced them. The thread runs next to the Celery task of its process:
a small job does not wait for a training job's turn.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import NamedTuple

import redis

from convcore import backend

from . import ops, runtime
from .jobrun import run_job
from .kinds import BACKWARD, FORWARD

log = logging.getLogger("convnd.worker")

KINDS = {FORWARD.name: FORWARD, BACKWARD.name: BACKWARD}   # the kinds the lane takes, by name
OPS = {FORWARD.name: ops.forward, BACKWARD.name: ops.backward}
TAKE_TIMEOUT_S = 1.0   # how long one BLMOVE blocks: a stopping worker notices within this
# A fast-lane job runs beside the Celery task of its process, so its memory adds to that job's peak:
# it stays small (64 MiB is ~10x the arrays of a small layer's call).
MAX_PEAK_BYTES = 64 * 2**20
RETRY_S = 0.5          # back-off after a Redis error

# The takers whose heartbeat key is missing. KEYS: takers set; ARGV: heartbeat-key prefix.
SILENT = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then out[#out + 1] = id end
end
return out
"""
# The entries of the takers ARGV[4..] that still have no heartbeat go back to the head of the list, in
# the order they were taken; nothing when the sweeper ARGV[3] has no heartbeat itself. KEYS: takers
# set, fast list; ARGV: taken-list prefix, heartbeat-key prefix, sweeper id, taker ids.
SWEEP = """
if redis.call('EXISTS', ARGV[2] .. ARGV[3]) == 0 then return 0 end
local moved = 0
for i = 4, #ARGV do
  if redis.call('EXISTS', ARGV[2] .. ARGV[i]) == 0 then
    while redis.call('LMOVE', ARGV[1] .. ARGV[i], KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
    redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return moved
"""


# Take back an entry nobody has taken yet, and the record's lane with it. KEYS: fast list, job record;
# ARGV: entry. 1 when it was still waiting, 0 when a worker took it (it runs there).
WITHDRAW = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], 'lane')
  return 1
end
return 0
"""


def list_key(prefix: str, queue: str) -> str:
    return f"{prefix}:fast:{queue}"


def taken_key(prefix: str, queue: str, worker_id: str) -> str:
    return f"{list_key(prefix, queue)}:taken:{worker_id}"


def takers_key(prefix: str, queue: str) -> str:
    return f"{list_key(prefix, queue)}:takers"


def multiply_adds(geom, need=("y",)) -> int:
    """Multiply-adds of a direct forward (``need`` ``("y",)``) or backward: one forward's worth per
    gradient of x and W (gb is a sum)."""
    forward = math.prod(geom.out_shape) * math.prod(geom.kernel_shape[1:])
    return forward * max(1, sum(n in ("y", "x", "W") for n in need))


class Work(NamedTuple):
    """The size of a convolution job, as the API checked it (``app.api.conv_limits.check_conv``)."""
    madds: int        # ``multiply_adds``
    peak_bytes: int   # ``convcore.estimate_memory``'s peak


def eligible(kind_name: str, work: Work | None, max_madds: int) -> bool:
    """Whether a job of ``kind_name`` and size ``work`` goes to the fast lane (``max_madds`` 0: none does)."""
    return (work is not None and 0 < max_madds and work.madds <= max_madds and work.peak_bytes <= MAX_PEAK_BYTES
            and kind_name in KINDS)


def offered(workers: list[dict], queue: str) -> int:
    """The largest job (multiply-adds) a live worker of ``queue`` takes on its fast lane: the most of
    their heartbeats' ``fast_lane`` (each its own ``fast_lane_max_madds``, 0 when off)."""
    return max((int(w.get("fast_lane") or 0) for w in workers if w.get("queue") == queue), default=0)


def served(workers: list[dict], queue: str, madds: int) -> bool:
    """Whether a live worker of ``queue`` offers its fast lane to a job of ``madds`` multiply-adds."""
    return offered(workers, queue) >= max(madds, 1)


def push(r: redis.Redis, prefix: str, queue: str, kind_name: str, job_id: str, job_key: str) -> None:
    """Queue a stored job on the fast lane of ``queue``; its record says which lane took it."""
    pipe = r.pipeline(transaction=False)
    pipe.hset(job_key, "lane", "fast")
    pipe.rpush(list_key(prefix, queue), f"{kind_name}:{job_id}")
    pipe.execute()


def queued_on(prefix: str, queue: str, kind_name: str) -> tuple[tuple[str, str], dict]:
    """(``push``, ``fields``) for ``JobStore.create_reading_workers``: a job stored with these is queued
    on the fast lane of ``queue`` in the same step, as ``push`` would queue it (the API's step that stores
    the job, when it already knows the route)."""
    return (list_key(prefix, queue), f"{kind_name}:"), {"lane": "fast"}


def withdraw(r: redis.Redis, prefix: str, queue: str, kind_name: str, job_id: str, job_key: str) -> bool:
    """Take a pushed entry back from the lane of ``queue`` (its record's lane too): True when it was
    still waiting, False when a worker of that queue took it already (then it runs there)."""
    return bool(r.eval(WITHDRAW, 2, list_key(prefix, queue), job_key, f"{kind_name}:{job_id}"))


def lengths(r: redis.Redis, prefix: str, queues) -> dict:
    """{queue: entries waiting on its fast lane}."""
    queues = list(queues)
    pipe = r.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(list_key(prefix, queue))
    return dict(zip(queues, pipe.execute()))


def silent(r: redis.Redis, prefix: str, queue: str) -> set[str]:
    """Ids of the queue's takers whose heartbeat key is missing now."""
    return {i.decode() for i in r.eval(SILENT, 1, takers_key(prefix, queue), f"{prefix}:worker:")}


def sweep(r: redis.Redis, prefix: str, queue: str, sweeper: str, ids) -> int:
    """Return the entries of the takers ``ids`` that still have no heartbeat to the list (nothing unless
    ``sweeper`` has one); how many moved."""
    return int(r.eval(SWEEP, 2, takers_key(prefix, queue), list_key(prefix, queue),
                      f"{list_key(prefix, queue)}:taken:", f"{prefix}:worker:", sweeper, *ids))


class FastLane:
    """The thread of one worker process that takes fast-lane entries of ``queue`` and runs them with
    ``run(job_id, kind) -> state`` (``worker.jobrun.run_job`` with the kind's op)."""

    def __init__(self, r: redis.Redis, prefix: str, queue: str, worker_id: str, run, sweep_every_s: float,
                 idle=None):
        self.r, self.prefix, self.queue, self.worker_id = r, prefix, queue, worker_id
        self.run, self.sweep_every_s = run, sweep_every_s
        self.idle = idle   # called once a take finds nothing after jobs ran (``release_here``)
        self.list, self.taken = list_key(prefix, queue), taken_key(prefix, queue, worker_id)
        self.takers = takers_key(prefix, queue)
        self._silent_before: set[str] = set()   # takers without a heartbeat at the previous sweep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="convnd-fast-lane", daemon=True)

    def start(self) -> FastLane:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = TAKE_TIMEOUT_S + 5.0) -> None:
        """Stop taking entries; wait for the one running (a fast-lane job is small) and the last take."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        # ``recover``: after a start or a Redis error, whatever this process's taken list holds was taken and
        # not finished (a take that failed may still have moved its entry): run it first. A finished entry
        # found there again is harmless: its claim sees that it has ended.
        finished, pending, next_sweep, recover, ran = None, None, 0.0, True, False
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    self.sweep_lost()
                    next_sweep = time.monotonic() + self.sweep_every_s
                if recover:
                    pending, recover = pending or self.r.lindex(self.taken, 0), False
                entry = pending or self._take(finished)
                finished, pending = None, entry
                if entry is None:
                    if ran and self.idle is not None:
                        ran = False
                        self.idle()
                    continue
                ran = True
                self._run_entry(entry)
                finished, pending = entry, None
            except redis.RedisError as exc:
                log.warning("fast lane %s: %s; retrying in %.1f s", self.queue, exc, RETRY_S)
                recover, self._silent_before = True, set()   # what was seen before the error does not count
                self._stop.wait(RETRY_S)
            except Exception:  # noqa: BLE001 - the thread must outlive any one entry
                log.exception("fast lane %s: entry %r dropped", self.queue, pending)
                finished, pending = pending, None
        if finished is not None:
            try:
                self.r.lrem(self.taken, 1, finished)
            except redis.RedisError:
                pass   # left in the taken list: a sweep returns it, its claim then sees it has ended

    def sweep_lost(self) -> int:
        """One sweep: the takers silent now and at the previous sweep (a liveness period apart) are lost."""
        now = silent(self.r, self.prefix, self.queue) - {self.worker_id}
        lost, self._silent_before = sorted(now & self._silent_before), now
        moved = sweep(self.r, self.prefix, self.queue, self.worker_id, lost) if lost else 0
        if moved:
            log.warning("fast lane %s: %d job(s) of lost workers %s queued again", self.queue, moved, lost)
        return moved

    def _take(self, finished: bytes | None) -> bytes | None:
        """The next entry (moved into this worker's taken list), or None after ``TAKE_TIMEOUT_S``; the
        previous one leaves the taken list in the same round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(self.takers, self.worker_id)   # again each time: a sweep drops ids whose heartbeat lapsed
        if finished is not None:
            pipe.lrem(self.taken, 1, finished)
        pipe.blmove(self.list, self.taken, TAKE_TIMEOUT_S, "LEFT", "RIGHT")
        return pipe.execute()[-1]

    def _run_entry(self, entry: bytes) -> None:
        kind_name, _, job_id = entry.decode("utf-8", "replace").partition(":")
        kind = KINDS.get(kind_name)
        if kind is None or not job_id:
            log.error("fast lane %s: entry %r names no fast-lane job; dropped", self.queue, entry)
            return
        self.run(job_id, kind)


def run_here(job_id: str, kind) -> str:
    """A fast-lane job in this worker process, as its Celery task would run it (``worker.tasks``).

    Its own stream on a GPU: the job does not queue behind the kernels of a training job that the
    process's Celery task runs on the default stream. Unlike a Celery task it hands no memory back
    right after: freeing device memory (cudaFree) waits for the whole device, so the lane's next job
    would wait for the training's kernels after all. ``release_here`` does it once the lane is idle.
    """
    runtime.use_device()   # CUDA's current device is per thread
    with backend.thread_stream(runtime.xp()):
        return run_job(job_id, OPS[kind.name], kind.inputs)


def release_here() -> None:
    """Once the lane is idle (a take found nothing after jobs ran): hand back what this thread cached
    on the device, its stream's pooled blocks and its FFT plans (a no-op on the CPU: the C heap's
    trim is process-wide, and a training job may be running beside the lane)."""
    xp = runtime.xp()
    if xp is None or backend.is_host_module(xp):
        return
    with backend.thread_stream(xp) as stream:
        runtime.release_memory(xp, stream=stream)


def start_here() -> FastLane:
    """This worker process's fast lane, started."""
    settings = runtime.settings()
    store = runtime.store()
    return FastLane(store.r, store.prefix, runtime.queue(), runtime.worker_id(), run_here,
                    settings.worker_liveness_s, idle=release_here).start()
