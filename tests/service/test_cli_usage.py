"""The ``convnd`` command as a new user meets it: help without arguments, --version, help text on
every option, aligned ``convnd jobs`` columns, and a pipe closed early is not an error."""
from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version

from app.cli import build_parser
from app.commands.jobs import HEADER, row, table

CONVND = [sys.executable, "-m", "app.cli"]


def test_convnd_alone_prints_help():
    run = subprocess.run(CONVND, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: convnd") and " up " in run.stdout and "Traceback" not in run.stderr


def test_version():
    run = subprocess.run(CONVND + ["--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (run.returncode, run.stdout) == (0, f"convnd {version('convnd')}\n")


def test_every_option_of_every_command_has_help():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, parser in commands.choices.items() for action in parser._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert "worker" in commands.choices and missing == []


def test_jobs_columns_stay_aligned_whatever_the_kind():
    jobs = [{"id": "a" * 32, "kind": kind, "state": state, "progress": progress, "timings": {"created_at": 0}}
            for kind, state, progress in [("train", "running", {"fraction": 0.5}), ("conv.gradcheck", "succeeded", {}),
                                          ("conv.forward", "queued", None)]]
    lines = table([HEADER] + [row(job) for job in jobs])
    for column in ("state", "created"):  # where each column starts, read from the header
        start = lines[0].index(column)
        assert all(line[start - 2:start] == "  " and line[start] != " " for line in lines), lines
    end = lines[0].index("progress") + len("progress")  # progress is right-aligned under its header
    assert [line[end - 3:end] for line in lines[1:]] == ["50%", "  -", "  -"], lines


def test_jobs_into_a_pipe_closed_early_is_not_an_error(api):
    # `convnd jobs | head -0`: the reader is gone before the first line is written.
    proc = subprocess.Popen(CONVND + ["jobs", "--url", api.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
