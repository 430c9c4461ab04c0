"""`docker compose --profile monitoring up`: Prometheus scrapes the API's /metrics with the token the
API accepts (read from the files, since CI has no Docker engine; test_compose.py runs
`docker compose config` where the plugin exists)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_prometheus_scrapes_the_api_with_the_metrics_token():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prom, api = compose["services"]["prometheus"], compose["services"]["api"]
    assert prom["profiles"] == ["monitoring"] and "profiles" not in api
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if v.startswith("./")}
    config_path = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    host, port = job["static_configs"][0]["targets"][0].split(":")
    assert host == "api" and port == api["ports"][0].rsplit(":", 1)[1].strip('"]')
    # The same variable reaches the API (a Settings field) and the file Prometheus reads the token from.
    assert "metrics_token" in Settings.model_fields and "CONVND_METRICS_TOKEN" in api["environment"]
    assert "CONVND_METRICS_TOKEN" in prom["environment"]
    token_file = job["authorization"]["credentials_file"]
    assert re.search(rf'"\$\$CONVND_METRICS_TOKEN" > {re.escape(token_file)}', " ".join(prom["command"]))
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"]), "a pinned image tag"
