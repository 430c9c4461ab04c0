"""``convnd jobs``: your jobs on the service, newest first."""
from __future__ import annotations

import time

from app.client import Client
from app.commands.common import add_connection_args, reporting


def register(sub) -> None:
    p = sub.add_parser("jobs", help="list your jobs (newest first)")
    p.add_argument("--limit", type=int, default=20)
    add_connection_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    with reporting("jobs", args.url), Client(args.url, args.api_key) as client:
        jobs = client.jobs(args.limit)
    print(f"{'id':32}  {'kind':13} {'state':10} {'progress':>8}  created")
    for job in jobs:
        fraction = (job.get("progress") or {}).get("fraction")
        progress = "-" if fraction is None else f"{100 * fraction:.0f}%"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["timings"]["created_at"]))
        print(f"{job['id']:32}  {job['kind']:13} {job['state']:10} {progress:>8}  {created}")
    return 0
