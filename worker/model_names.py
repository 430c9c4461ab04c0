"""Names of trained models: an optional alias of a training job, unique per owner while it names a model.

Key (``p`` = settings.key_prefix):
    p:owner:<owner>:model:<name>   string: the training job's id, with the job's TTL; while the job is
                                   being queued, ``pending:<token>`` for at most PENDING_TTL_S.

A name stays taken while its job lives and has (or may still get) a model: queued, running,
succeeded, or ended with a checkpoint. A job that failed or was cancelled before its first
epoch gives its name back, so a failed attempt does not block the name for the job's TTL.
"""
from __future__ import annotations

import uuid

from .checkpoints import has_checkpoint
from .store import JobStore

PENDING = "pending:"
PENDING_TTL_S = 60  # longer than queueing a job takes; a crashed API frees the name after it

# Replace the value only if it is still the one read (a name is never taken twice by a race).
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 1
"""


def _key(store: JobStore, owner: str, name: str) -> str:
    return f"{store.prefix}:owner:{owner}:model:{name}"


def _swap(store: JobStore, key: str, expected: str, new: str, ttl_s: int) -> bool:
    return bool(store.r.eval(_SWAP, 1, key, expected, new, str(max(int(ttl_s), 1))))


def holder(store: JobStore, owner: str, name: str) -> str | None:
    """The id of the training job named ``name`` for ``owner``, or None (unknown, expired or still queueing)."""
    value = store.r.get(_key(store, owner, name))
    if value is None or value.decode().startswith(PENDING):
        return None
    return value.decode()


def _names_a_model(store: JobStore, job_id: str) -> bool:
    job = store.get(job_id)
    if job is None:
        return False
    return job["state"] not in ("failed", "cancelled") or has_checkpoint(store, job_id)


def reserve(store: JobStore, owner: str, name: str) -> tuple[str | None, str | None]:
    """(token, None) once ``name`` is reserved for a job about to be queued; (None, holder id) when taken.

    Pass the token to ``bind`` once the job exists, or to ``release`` if queueing failed."""
    key = _key(store, owner, name)
    token = PENDING + uuid.uuid4().hex
    for _ in range(3):  # the holder may change between the reads: try again a few times
        if store.r.set(key, token, nx=True, ex=PENDING_TTL_S):
            return token, None
        current = store.r.get(key)
        if current is None:
            continue
        current = current.decode()
        if current.startswith(PENDING):
            return None, "a job being queued now"
        if _names_a_model(store, current):
            return None, f"job {current}"
        if _swap(store, key, current, token, PENDING_TTL_S):  # its job ended without a model: the name is free
            return token, None
    return None, "a concurrent request"


def bind(store: JobStore, owner: str, name: str, token: str, job_id: str) -> bool:
    """Point the reserved ``name`` at ``job_id`` for as long as the job lives."""
    return _swap(store, _key(store, owner, name), token, job_id, store.ttl)


def release(store: JobStore, owner: str, name: str, token: str) -> None:
    """Give back a reservation whose job was never queued."""
    _swap(store, _key(store, owner, name), token, "", 1)
