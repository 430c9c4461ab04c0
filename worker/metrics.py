"""Service metrics counted in Redis where a job's state changes, so ``GET /metrics`` on any API
process is right for every process at once: the API (cancels, overdue jobs) and each worker
process (outcomes, epochs). The counters only grow and outlive the processes that wrote them.

Keys (``p`` = key prefix):
    p:metrics:jobs              hash "<kind>|<state>" -> jobs that reached that final state
    p:metrics:duration:<kind>   hash "b<i>" -> jobs whose duration fell in bucket i (not cumulative;
                                i = len(DURATION_BUCKETS) is +Inf), "sum" (s), "count"
    p:metrics:kinds             set of the kinds with a duration hash
    p:metrics:epochs            training epochs finished
"""
from __future__ import annotations

# Upper bounds (s) of the duration histogram: from a millisecond convolution to a 4-hour training run.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)

# kombu's Redis transport keeps a queue as a list under its name, one more list per priority step.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def _key(prefix: str, *parts: str) -> str:
    return ":".join((prefix, "metrics", *parts))


def _lua_buckets() -> str:
    return "{" + ", ".join(repr(float(b)) for b in DURATION_BUCKETS) + "}"


# The Lua form of the count, so a job store script can count a job in the same atomic step that
# ends it (worker.store.JobStore.finish): defines count_final(prefix, job_key, state).
COUNT_FINAL_LUA = """
local function count_final(prefix, job_key, state)
  local rec = redis.call('HMGET', job_key, 'kind', 'created_at', 'finished_at')
  local kind, created, finished = rec[1], tonumber(rec[2]), tonumber(rec[3])
  if not kind then return end
  local seconds = 0.0
  if created and finished then seconds = math.max(finished - created, 0.0) end
  local bounds, bucket = %s, nil
  for i, bound in ipairs(bounds) do
    if seconds <= bound then bucket = i - 1 break end
  end
  bucket = bucket or #bounds
  local duration = prefix .. ':metrics:duration:' .. kind
  redis.call('HINCRBY', prefix .. ':metrics:jobs', kind .. '|' .. state, 1)
  redis.call('HINCRBY', duration, 'b' .. bucket, 1)
  redis.call('HINCRBYFLOAT', duration, 'sum', seconds)
  redis.call('HINCRBY', duration, 'count', 1)
  redis.call('SADD', prefix .. ':metrics:kinds', kind)
end
""" % _lua_buckets()


def count_final(r, prefix: str, job_key: str, state: str) -> None:
    """The job at ``job_key`` has just reached final ``state`` (call once, after the state change):
    count it under its kind, with its time from submission to now in the duration histogram
    (the bucket is the first bound >= its seconds, "le")."""
    r.eval(COUNT_FINAL_LUA + "count_final(ARGV[1], KEYS[1], ARGV[2])", 1, job_key, prefix, state)


def count_epoch(r, prefix: str) -> None:
    """One training epoch finished (in whichever worker process)."""
    r.incr(_key(prefix, "epochs"))


def read(r, prefix: str) -> dict:
    """What ``count_*`` recorded: {"jobs": {(kind, state): n}, "epochs": n, "durations": {kind:
    {"buckets": [cumulative count at each bound of DURATION_BUCKETS, then +Inf], "sum", "count"}}}."""
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(_key(prefix, "jobs"))
    pipe.smembers(_key(prefix, "kinds"))
    pipe.get(_key(prefix, "epochs"))
    jobs_raw, kinds_raw, epochs = pipe.execute()
    kinds = sorted(k.decode() for k in kinds_raw)
    pipe = r.pipeline(transaction=False)
    for kind in kinds:
        pipe.hgetall(_key(prefix, "duration", kind))
    durations = {}
    for kind, raw in zip(kinds, pipe.execute()):
        raw = {k.decode(): v for k, v in raw.items()}
        running, cumulative = 0, []
        for i in range(len(DURATION_BUCKETS) + 1):
            running += int(raw.get(f"b{i}", 0))
            cumulative.append(running)
        durations[kind] = {"buckets": cumulative, "sum": float(raw.get("sum", 0)), "count": int(raw.get("count", 0))}
    jobs = {tuple(k.decode().split("|", 1)): int(v) for k, v in jobs_raw.items()}
    return {"jobs": jobs, "durations": durations, "epochs": int(epochs or 0)}


def queue_lengths(r, queues) -> dict:
    """{queue: messages waiting} of Celery queues on the Redis transport (all priority steps)."""
    queues = list(queues)
    pipe = r.pipeline(transaction=False)
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    counts = pipe.execute()
    n = len(_PRIORITY_SUFFIXES)
    return {queue: sum(counts[i * n:(i + 1) * n]) for i, queue in enumerate(queues)}


def queue_names(settings) -> list[str]:
    """The Celery queues the service's workers consume: the CPU queue and the GPU one."""
    return [settings.queue_for("cpu"), settings.queue_for("gpu")]
