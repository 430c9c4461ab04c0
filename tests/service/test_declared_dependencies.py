"""Every third-party module the package code imports (at any depth, inside functions too) is
declared in pyproject.toml: a dependency, or the ``gpu`` extra for CuPy. An undeclared one
works here only because something else happened to install it."""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "worker", "convcore")
OPTIONAL = {"cupy": "gpu", "cupyx": "gpu",   # imported only when a GPU is wanted; optional extra
            "pyfftw": "fftw"}             # imported only with CONVCORE_FFT=fftw; optional extra

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}


def imported_modules() -> dict[str, str]:
    """Top-level third-party module -> one file that imports it."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"])
    extras = {name: requirement_names(reqs) for name, reqs in project.get("optional-dependencies", {}).items()}
    distributions = packages_distributions()
    missing = []
    for module, where in imported_modules().items():
        if module in OPTIONAL:
            if not extras.get(OPTIONAL[module]):
                missing.append(f"{module} ({where}): the {OPTIONAL[module]!r} extra is missing")
            continue
        dists = {normalize(d) for d in distributions.get(module, [])}
        if not dists:
            missing.append(f"{module} ({where}): not installed, so not declared")
        elif not dists & declared:
            missing.append(f"{module} ({where}): from {sorted(dists)}, not in [project] dependencies")
    assert not missing, "undeclared imports:\n" + "\n".join(missing)


def test_the_redis_transport_extra_is_declared():
    """kombu's Redis transport imports ``packaging``; ``celery[redis]`` is what declares it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"celery\[[^\]]*redis", r.replace(" ", "")) for r in project["dependencies"])
