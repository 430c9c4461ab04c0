"""The GPU install paths carry what CuPy needs to run kernels (issue 9), checked by reading the files
(CI has no Docker engine and no GPU): the `gpu` extra brings the CUDA libraries and runtime headers,
the Dockerfile's GPU build installs that extra on a current base, compose's GPU worker refuses to
start without a working GPU, and the README names the driver requirement."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def extras() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}


@pytest.mark.parametrize("extra, package", [("gpu", "cupy-cuda12x"), ("gpu-cuda13", "cupy-cuda13x")])
def test_gpu_extras_bring_cupy_with_the_cuda_toolkit_wheels(extras, extra, package):
    # CuPy's [ctk] extra = cuda-toolkit[cublas,cudart,cufft,nvrtc,...]: libraries and the runtime headers
    # that NVRTC needs for every kernel CuPy compiles (CUDA >= 12.2). Plain cupy-cudaXXx brings neither.
    (req,) = [r for r in extras[extra] if r.name == package]
    assert "ctk" in req.extras
    assert req.specifier.contains("14.2.0") and not req.specifier.contains("13.6.0")


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_gpu_build_installs_the_gpu_extra():
    text = _dockerfile()
    gpu_install = re.search(r'if \[ "\$GPU" = "1" \]; then pip install "\.\[gpu\]"', text)
    assert gpu_install, "the GPU build must install the gpu extra (CUDA libraries + headers)"
    assert "ARG GPU=0" in text and "ARG BASE=" in text


def _cuda_tag(base: str) -> tuple[int, int, str]:
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|devel|cudnn-devel|cudnn-runtime)-ubuntu(\d+\.\d+)",
                     base)
    assert m, f"not an nvidia/cuda tag: {base}"
    return int(m[1]), int(m[2]), m[4]


def test_gpu_base_images_are_current_cuda_12_tags():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    bases = [compose["services"]["worker-gpu"]["build"]["args"]["BASE"]]
    bases += re.findall(r"BASE=(nvidia/cuda:\S+)", _dockerfile())
    assert len(bases) >= 2
    for base in bases:
        major, minor, ubuntu = _cuda_tag(base)
        # The extra installs CUDA 12 wheels: a 12.x base matches them; 12.4 and Ubuntu 22.04 are outdated tags.
        assert (major, minor) >= (12, 8) and major == 12 and ubuntu >= "24.04", base


def test_compose_gpu_worker_serves_the_gpu_queue_and_refuses_to_run_without_a_gpu():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["worker-gpu"]["environment"]["CONVND_DEVICE"] == "gpu"
    assert services["worker"]["environment"]["CONVND_DEVICE"] == "cpu"
    assert services["worker-gpu"]["profiles"] == ["gpu"]


def test_readme_states_the_driver_requirement_and_the_device_settings():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"driver[^.\n]*>= ?525", readme), "README must name the NVIDIA driver version CUDA 12 needs"
    for name in ("CONVND_DEVICE", "CONVND_GPU_IDS", "'.[gpu]'", "gpu_check.sh"):
        assert name in readme, name
