"""docker-compose.yml and Dockerfile agree with the code: `docker compose config` (no engine needed),
and every setting, command and path they name exists."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.cli import build_parser
from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="the `docker compose` plugin is not installed "
                                                     "(validated structurally by the other tests here)")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["cpu", "gpu"])
def test_docker_compose_config_is_valid(profile):
    r = subprocess.run(["docker", "compose", *profile, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_health_and_gpu_reservation(compose):
    s = compose["services"]
    assert set(s) >= {"redis", "api", "worker", "worker-gpu"}
    assert "--appendonly" in s["redis"]["command"] and "noeviction" in s["redis"]["command"]
    assert s["redis"]["healthcheck"]["test"][-1] == "ping"
    for name in ("api", "worker", "worker-gpu"):
        assert s[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    devices = s["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and s["worker-gpu"]["build"]["args"]["GPU"] == "1"


def test_environment_names_are_settings(compose):
    fields = set(Settings.model_fields)
    for name in ("api", "worker", "worker-gpu"):
        for var in compose["services"][name]["environment"]:
            if var != "REDIS_URL":
                assert var.startswith("CONVND_") and var[7:].lower() in fields, (name, var)


def test_commands_are_cli_subcommands(compose):
    parser = build_parser()
    for name in ("api", "worker", "worker-gpu"):
        cmd = compose["services"][name]["command"]
        assert cmd[0] == "convnd"
        parser.parse_args(cmd[1:])  # exits (fails the test) on an unknown command or option


def test_dockerfile_copies_the_packages():
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("convcore", "app", "worker"):
        assert f"COPY {pkg} ./{pkg}" in text and (ROOT / pkg / "__init__.py").exists()
    assert '".[gpu]"' in text  # the GPU build: CuPy with CUDA libraries and headers (test_gpu_packaging.py)
    assert "tests" in (ROOT / ".dockerignore").read_text().split()
