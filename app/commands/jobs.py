"""``convnd jobs``: your jobs on the service, newest first."""
from __future__ import annotations

import sys
import time

import httpx

from app.client import Client, ClientError
from app.commands.train import add_connection_args


def register(sub) -> None:
    p = sub.add_parser("jobs", help="list your jobs (newest first)")
    p.add_argument("--limit", type=int, default=20)
    add_connection_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        with Client(args.url, args.api_key) as client:
            jobs = client.jobs(args.limit)
    except ClientError as exc:
        print(f"convnd jobs: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"convnd jobs: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"{'id':32}  {'kind':13} {'state':10} {'progress':>8}  created")
    for job in jobs:
        fraction = (job.get("progress") or {}).get("fraction")
        progress = "-" if fraction is None else f"{100 * fraction:.0f}%"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["timings"]["created_at"]))
        print(f"{job['id']:32}  {job['kind']:13} {job['state']:10} {progress:>8}  {created}")
    return 0
