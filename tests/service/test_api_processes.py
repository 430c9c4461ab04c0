"""Several API processes on one port (`convnd api --workers N`, CONVND_API_PROCESSES): both serve
requests, and /metrics, answered by whichever process a scrape reaches, counts every process's HTTP
requests (read with Prometheus's own text parser)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(120)
CLIENTS, PER_CLIENT = 8, 15


@pytest.fixture(scope="module")
def two_processes(api_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-metrics")   # given, so the test can see whose counts it holds
    return api_factory("two-processes", api_processes=2, PROMETHEUS_MULTIPROC_DIR=folder), folder


def healthz_count(base: str) -> float:
    """convnd_http_requests{route="/healthz", status="200"} from one scrape on a new connection."""
    r = httpx.get(base + "/metrics", headers={"Connection": "close"})
    assert r.status_code == 200, r.text
    return sum(s.value for family in text_string_to_metric_families(r.text) for s in family.samples
               if s.name == "convnd_http_requests_total" and s.labels.get("route") == "/healthz"
               and s.labels.get("status") == "200")


def test_every_scrape_counts_the_requests_of_both_processes(two_processes):
    api, folder = two_processes
    before = healthz_count(api.url)

    def client(_):
        for _ in range(PER_CLIENT):   # a new connection each: the processes take turns accepting them
            assert httpx.get(api.url + "/healthz", headers={"Connection": "close"}).status_code == 200

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    # Both processes answered some of them (each keeps its counts in a file named by its pid) ...
    assert len(list(folder.glob("counter_*.db"))) >= 2, sorted(p.name for p in folder.iterdir())
    # ... and every scrape, whichever process answers it, counts all of them.
    counts = [healthz_count(api.url) for _ in range(8)]
    assert counts == [before + CLIENTS * PER_CLIENT] * 8, (before, counts)


def test_two_processes_serve_a_convolution(two_processes, worker):
    api, _ = two_processes
    body = {"x": {"shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            "W": {"shape": [1, 1, 2], "datatype": "FP32", "data": [1, 1]}}
    for _ in range(4):
        r = httpx.post(api.url + "/v1/conv/forward", json=body, headers={"Connection": "close"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["y"]["data"] == [3.0, 5.0, 7.0]
