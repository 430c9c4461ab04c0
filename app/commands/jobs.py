"""``convnd jobs``: your jobs on the service, newest first."""
from __future__ import annotations

import time

from app.client import Client
from app.commands.common import add_connection_args, reporting

HEADER = ("id", "kind", "state", "progress", "created")


def register(sub) -> None:
    p = sub.add_parser("jobs", help="list your jobs (newest first)")
    p.add_argument("--limit", type=int, default=20, help="how many jobs to show (default 20)")
    add_connection_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    with reporting("jobs", args.url), Client(args.url, args.api_key) as client:
        jobs = client.jobs(args.limit)
    for line in table([HEADER] + [row(job) for job in jobs]):
        print(line)
    return 0


def row(job: dict) -> tuple[str, ...]:
    fraction = (job.get("progress") or {}).get("fraction")
    progress = "-" if fraction is None else f"{100 * fraction:.0f}%"
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["timings"]["created_at"]))
    return job["id"], job["kind"], job["state"], progress, created


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Columns as wide as their widest cell, so no kind or state pushes the next column along."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    right = [name == "progress" for name in HEADER]  # numbers line up on the right
    return ["  ".join(cell.rjust(w) if on_right else cell.ljust(w)
                      for cell, w, on_right in zip(r, widths, right)).rstrip() for r in rows]
