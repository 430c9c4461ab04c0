"""The ``convnd`` command as a new user meets it: help without arguments, --version, help text on
every option, aligned ``convnd jobs`` columns, and a pipe closed early is not an error."""
from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version

from app.cli import build_parser
from app.core.processes import free_port
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


def test_bad_options_are_one_line_errors_not_tracebacks(tmp_path):
    """Found by probing the command from outside: each of these was a Python traceback."""
    afile = tmp_path / "afile"
    afile.write_text("")
    cases = [(["up", "--port", "70000"], 2, "--port: 70000 is not a port number"),
             (["up", "--redis-port", "-5"], 2, "--redis-port: -5 is not a port number"),
             (["api", "--port", "abc"], 2, "'abc' is not a port number"),
             (["worker", "--concurrency", "-1"], 2, "--concurrency: -1: at least 1"),
             (["worker", "--loglevel", "bogus"], 2, "invalid choice: 'BOGUS'"),
             (["jobs", "--url", "http://127.0.0.1:abc"], 1, "is not a usable URL"),
             (["jobs", "--api-key", "clé", "--url", "http://127.0.0.1:9"], 1, "the API key must be printable ASCII"),
             (["up", "--port", str(free_port()), "--data-dir", str(afile)], 1, "cannot use"),]
    for args, status, words in cases:
        run = subprocess.run(CONVND + args, capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == status and words in run.stderr, (args, run.returncode, run.stderr[-500:])
        assert "Traceback" not in run.stderr, (args, run.stderr[-500:])


def test_ids_are_one_path_segment_and_odd_answers_are_client_errors(api):
    """Found by probing: `convnd model '?x=1'` asked for another path, got a redirect, and saved its
    empty body as the model (exit 0); a JSON list as an error body was an AttributeError."""
    import pytest

    from app.client import Client, ClientError

    with Client(api.url) as client:
        for odd in ("?x=1", "#", "a/b", "%2e%2e", "..."):
            with pytest.raises(ClientError) as err:
                client.model_bytes(odd)
            assert err.value.status == 404, (odd, err.value)
        for no_segment in ("", ".", ".."):   # URLs resolve '.' and '..': job('.') listed every job
            with pytest.raises(ValueError, match="non-empty string other than '.' and '..'"):
                client.job(no_segment)
        with pytest.raises(ClientError) as err:   # a path the service redirects: not an answer
            client._call("GET", "/v1/jobs/")
        assert err.value.status in (307, 308, 404), err.value


def test_job_files_outside_standard_json_are_named(tmp_path):
    """Python's parser reads NaN and 1e999 (as inf), which the service's JSON cannot carry: the client
    said only "Out of range float values are not JSON compliant". A byte-order mark is skipped."""
    cases = {'{"epochs": NaN}': "NaN is not a JSON number", '{"lr": -Infinity}': "-Infinity is not a JSON number",
             '{"a": [1, 1e999]}': "1e999 is out of the range of a float"}
    for text, words in cases.items():
        job = tmp_path / "job.json"
        job.write_text(text)
        run = subprocess.run(CONVND + ["train", str(job), "--url", "http://127.0.0.1:9"], capture_output=True,
                             text=True, timeout=60, check=False)
        assert run.returncode == 1 and f"job file {job}: {words}" in run.stderr, (text, run.stderr[-500:])
    job.write_bytes(b"\xef\xbb\xbf" + b'{"epochs": 1}')   # read, then sent: nothing listens at this URL
    run = subprocess.run(CONVND + ["train", str(job), "--url", "http://127.0.0.1:9"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 1 and "cannot reach http://127.0.0.1:9" in run.stderr, run.stderr[-500:]


def test_another_server_answering_200_is_a_client_error():
    """--url at some other web server: its 200 page (or its own JSON) was a JSONDecodeError or a KeyError
    in the client, and a traceback in `convnd jobs`. Now a ClientError that says the answer is not ours."""
    import http.server
    import threading

    import pytest

    from app.client import Client, ClientError

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):   # noqa: N802 - the stdlib's name
            body = b"<html>hello</html>" if self.path.startswith("/v1/jobs?") else b'{"something": "else"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with Client(url) as client:
            with pytest.raises(ClientError, match=r"is not this service's \(not a JSON object\): '<html>hello"):
                client.jobs()
            with pytest.raises(ClientError, match=r"is not this service's \(no id\)"):
                client.job("abc")
        run = subprocess.run(CONVND + ["jobs", "--url", url], capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 1 and "is not this service's" in run.stderr, run.stderr[-500:]
        assert "Traceback" not in run.stderr
    finally:
        server.shutdown()
