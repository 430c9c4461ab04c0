"""The dashboard's files without a browser: every asset a page loads exists and ships in the wheel
(pyproject package-data), the vendored uPlot is the pinned version, and the pages are served with
their security headers (in-process, no Redis needed for these routes)."""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest

from app.ui import pages

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "app" / "ui" / "static"
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def test_every_static_file_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    files = [p.relative_to(ROOT / "app").as_posix() for p in STATIC.rglob("*") if p.is_file()]
    missing = [f for f in files if not any(_glob_matches(f, pat) for pat in patterns)]
    assert files and not missing, f"not in [tool.setuptools.package-data]: {missing}"


def _glob_matches(path: str, pattern: str) -> bool:
    """setuptools' package-data glob: ``*`` stays within one folder."""
    p, pat = PurePosixPath(path), PurePosixPath(pattern)
    return len(p.parts) == len(pat.parts) and p.match(pattern)


def test_every_referenced_asset_exists():
    refs = set()
    for page in STATIC.glob("*.html"):
        refs |= {m for m in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.read_text())}
        assert "<script>" not in page.read_text(), f"{page.name}: inline script (the CSP forbids it)"
    for module in STATIC.glob("*.js"):
        refs |= {f"/ui/static/{m[2:]}" for m in re.findall(r'from "(\./[^"]+)"', module.read_text())}
    assert refs
    for ref in refs:
        assert (STATIC / ref[len("/ui/static/"):]).is_file(), ref


def test_vendored_uplot_is_the_pinned_version():
    script = (ROOT / "scripts" / "vendor_uplot.sh").read_text()
    version = re.search(r"^VERSION=(\S+)", script, re.MULTILINE).group(1)
    assert (STATIC / "vendor" / "uplot" / "VERSION").read_text().startswith(f"uplot@{version} ")
    assert f"(v{version})" in (STATIC / "vendor" / "uplot" / "uPlot.esm.js").read_text()[:400]


def test_pages_and_their_headers():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    pages.install(app)
    client = TestClient(app)
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    for path in ("/ui/", "/ui/jobs/0123abcd", "/ui/train", "/ui/workers"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert client.get("/ui/static/vendor/uplot/uPlot.esm.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/../pages.py").status_code == 404


def test_examples_are_the_repositorys_job_files(tmp_path):
    names = [e["name"] for e in pages.example_jobs()]
    assert names == sorted(p.stem for p in (ROOT / "examples").glob("*.json"))
    assert pages.example_jobs()[0]["job"] == json.loads(min((ROOT / "examples").glob("*.json")).read_text())
    assert [e["name"] for e in pages.example_jobs(tmp_path)] == ["digits-2d"]  # an install without examples/
