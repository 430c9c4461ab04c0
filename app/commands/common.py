"""What the client commands share: the connection options and how they report failures."""
from __future__ import annotations

import contextlib
import os
import sys

import httpx

from app.client import ClientError
from app.core.config import get_settings


def add_connection_args(parser) -> None:
    s = get_settings()
    parser.add_argument("--url", default=os.environ.get("CONVND_URL", f"http://{s.host}:{s.port}"),
                        help="the API (default $CONVND_URL or http://HOST:PORT from the settings)")
    parser.add_argument("--api-key", default=os.environ.get("CONVND_API_KEY"),
                        help="API key (default $CONVND_API_KEY)")


@contextlib.contextmanager
def reporting(command: str, url: str):
    """Service errors, an unreachable service and unreadable files: one line on stderr, exit status 1."""
    try:
        yield
    except ClientError as exc:
        _fail(f"convnd {command}: {exc}")
    except httpx.InvalidURL as exc:   # not an HTTPError: raised while the client is made
        _fail(f"convnd {command}: --url {url!r} is not a usable URL: {exc}")
    except httpx.HTTPError as exc:  # connection refused, timeout
        _fail(f"convnd {command}: cannot reach {url}: {exc}")
    except RecursionError:   # a job file nested past the JSON parser's depth
        _fail(f"convnd {command}: the job file is nested too deeply to read")
    except (OSError, ValueError) as exc:  # a job file or output path that cannot be read or written
        _fail(f"convnd {command}: {exc}")


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(1)
