"""``convnd train --follow``, ``convnd jobs``, ``convnd model`` and ``convnd train --cancel`` against the live API."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from support.stack import tiny_job, wait_job

from convcore import nn


def convnd(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_train_follow_jobs_and_model(api, tmp_path):
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(tiny_job(epochs=2)))
    run = convnd("train", str(job_file), "--url", api.url, "--follow")
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = re.match(r"job ([0-9a-f]{32}) (?:queued|running)", run.stdout).group(1)
    assert re.search(r"epoch 1/2  train loss \d\.\d{4} acc \d\.\d{4}  val loss \d\.\d{4} acc \d\.\d{4}", run.stdout)
    assert "epoch 2/2" in run.stdout and "succeeded: 2 epochs" in run.stdout
    listing = convnd("jobs", "--url", api.url)
    assert listing.returncode == 0 and re.search(rf"{job_id}\s+train\s+succeeded\s+100%", listing.stdout)
    out = tmp_path / "model.npz"
    got = convnd("model", job_id, "-o", str(out), "--url", api.url)
    assert got.returncode == 0 and out.exists(), got.stderr
    assert nn.io.load(out).shapes[-1] == (10,)


def test_cancel_and_errors_from_the_command_line(api, tmp_path):
    job_id = api.client.post("/v1/train", json=tiny_job(epochs=100)).json()["id"]
    wait_job(api.client, job_id, ("running",))
    run = convnd("train", "--cancel", job_id, "--url", api.url)
    assert run.returncode == 0 and f"job {job_id} cancelled" in run.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tiny_job(model=[{"type": "conv", "out_channels": 4, "kernel_size": 9}])))
    run = convnd("train", str(bad), "--url", api.url)
    assert run.returncode == 1 and "422" in run.stderr and "layer 0 (conv)" in run.stderr


def test_an_unreachable_service_is_one_clear_line_not_a_traceback(tmp_path):
    from app.core.processes import free_port

    url = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    job = tmp_path / "job.json"
    job.write_text(json.dumps(tiny_job()))
    for args in (["train", str(job)], ["jobs"], ["model", "0" * 32, "-o", str(tmp_path / "m.npz")]):
        r = subprocess.run([sys.executable, "-m", "app.cli", *args, "--url", url], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert f"cannot reach {url}" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
