"""The dashboard in a real browser against the real stack: submit from /ui/train, watch the curves
grow while the job runs, see it succeed with its accuracy, cancel a job from its page, and log in
with a key that sees only its own jobs."""
from __future__ import annotations

import json

import pytest
from support.stack import tiny_job
from ui_helpers import make_page

pytestmark = pytest.mark.timeout(120)

# Slow enough per epoch to watch the curve grow, small enough to end in a few seconds.
# Long enough (a few seconds) that the page is seen "running" with points on its curve even when the
# engine is fast and the machine idle; three quick epochs could end between two looks of the test.
WATCHED = tiny_job(epochs=12, batch_size=8)
KEYS = {"alice": "alice-key-0123", "bob": "bob-key-4567"}


@pytest.fixture(scope="module")
def ui_api(api_factory, worker):
    """One API with two keys (the pages must work behind keys); the test's own calls use alice's."""
    api = api_factory("ui", api_keys=",".join(KEYS.values()))
    api.client.headers["X-API-Key"] = KEYS["alice"]
    return api


def set_field(page, name: str, value) -> None:
    box = page.find(f"#field-{name}")
    box.clear()
    box.send_keys(json.dumps(value))


def points(page, chart: str) -> int:
    return int(page.find(f"#{chart}").get_attribute("data-points") or 0)


def test_submit_watch_curves_and_succeed(browser, ui_api, downloads):
    page = make_page(browser, ui_api, KEYS["alice"])
    page.open("/")
    assert page.driver.current_url.endswith("/ui/"), "GET / goes to the jobs list"
    page.open("/ui/train?example=digits-2d")
    page.wait(lambda: page.find("#field-model"), "the example's fields")
    for name in ("model", "epochs", "batch_size", "optimizer"):
        set_field(page, name, WATCHED[name])

    set_field(page, "validation_split", 1.5)  # the server refuses it and names the field
    page.find("#submit").click()
    message = page.wait(lambda: page.text("#error-validation_split"), "the error next to validation_split")
    assert "validation_split" in message and "1.5" in message
    assert page.text("#error-epochs") == "" and "/ui/train" in page.driver.current_url

    set_field(page, "validation_split", 0.2)
    page.find("#submit").click()
    page.wait(lambda: "/ui/jobs/" in page.driver.current_url, "the job's page after submitting")
    job_id = page.driver.current_url.rsplit("/", 1)[1]

    # While it runs, the loss curve gains points (one per finished epoch).
    page.wait(lambda: page.text("#state") == "running", "state running")
    seen = page.wait(lambda: points(page, "chart-loss") >= 1 and page.text("#state") == "running" and
                     points(page, "chart-loss"), "a first epoch on the curve while running")
    page.wait(lambda: points(page, "chart-loss") > seen, "the curve gaining points")
    page.wait(lambda: page.text("#state") == "succeeded", "state succeeded")
    job = ui_api.client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and points(page, "chart-loss") == WATCHED["epochs"]
    final = job["result"]["final"]["val_accuracy"]
    assert page.text('[data-key="Final val. accuracy"]') == f"{100 * final:.1f}%"
    assert points(page, "chart-steps") > 0, "training loss per step"
    assert page.find("#download").is_displayed() and not page.find("#cancel").is_displayed()
    assert points(page, "chart-weights") == WATCHED["epochs"], "layer health: weight norm per epoch"
    assert page.text("#exploding") == "No layer is exploding."
    page.find("#download").click()  # fetched with the key header, saved under the server's file name
    saved = downloads / f"model-{job_id}.npz"
    page.wait(lambda: saved.is_file() and saved.stat().st_size > 0, "the downloaded model")
    assert saved.read_bytes() == ui_api.client.get(f"/v1/jobs/{job_id}/model").content
    assert page.errors() == []

    # The jobs list shows it, and the state filter keeps it or hides it.
    page.open("/ui/")
    row = f'tr[data-id="{job_id}"]'
    page.wait(lambda: page.find(row), "the job in the list")
    assert f"{100 * job['result']['best_val_accuracy']:.1f}%" in page.text(row)
    page.open("/ui/?state=failed")
    page.wait(lambda: page.text("#updated"), "a refresh")
    assert page.find_all(row) == []


def test_cancel_from_the_job_page(browser, ui_api):
    client = ui_api.client
    job_id = client.post("/v1/train", json=tiny_job(epochs=200)).json()["id"]
    page = make_page(browser, ui_api, KEYS["alice"])
    page.open(f"/ui/jobs/{job_id}")
    page.wait(lambda: page.text("#state") == "running", "state running")
    page.find("#cancel").click()
    page.wait(lambda: page.text("#state") == "cancelled", "state cancelled on the page")
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    assert not page.find("#cancel").is_displayed()


def test_workers_page(browser, ui_api):
    page = make_page(browser, ui_api, KEYS["alice"])
    page.open("/ui/workers")
    ready = ui_api.client.get("/readyz").json()["workers"]
    # Rows are read inside the wait: the page re-renders its tables every few seconds, and a row
    # found before a refresh is stale after it (the wait then reads the new ones).
    rows = page.wait(lambda: [r.text for r in page.find_all("#workers tbody tr")], "the worker rows")
    assert len(rows) == len(ready) and ready[0]["device"] in rows[0]
    selftest = ready[0]["selftest"]
    assert ("passed" if selftest["ok"] else "FAILED") in rows[0] and selftest["summary"] in rows[0]
    queues = page.wait(lambda: [q.get_attribute("data-queue") for q in page.find_all("#queues tbody tr")],
                       "the queue rows")
    assert queues == [q["name"] for q in ui_api.client.get("/v1/workers").json()["queues"]]


def test_a_key_sees_only_its_own_jobs(browser, ui_api):
    client = ui_api.client
    ids = {who: client.post("/v1/train", json=tiny_job(epochs=1), headers={"X-API-Key": key}).json()["id"]
           for who, key in KEYS.items()}
    page = make_page(browser, ui_api)
    page.open("/ui/")
    page.wait(lambda: page.find("#login").is_displayed(), "the key prompt")
    page.find("#login input").send_keys(KEYS["alice"])
    page.find("#login button").click()
    page.wait(lambda: page.find(f'tr[data-id="{ids["alice"]}"]'), "alice's job")
    assert page.find_all(f'tr[data-id="{ids["bob"]}"]') == []
    assert KEYS["alice"] not in page.driver.current_url and page.session_key() == KEYS["alice"]

    page.open(f"/ui/jobs/{ids['bob']}")  # someone else's job is not found, as in the API
    page.wait(lambda: "not yours" in page.text("#error"), "404 for bob's job")

    page.find("#forget-key").click()
    page.wait(lambda: page.find("#login").is_displayed(), "the key prompt again")
    page.find("#login input").send_keys("wrong-key")
    page.find("#login button").click()
    page.wait(lambda: "not accepted" in page.text("#login .login-message"), "a refused key")
    page.find("#login input").send_keys(KEYS["bob"])
    page.find("#login button").click()
    page.open("/ui/")
    page.wait(lambda: page.find(f'tr[data-id="{ids["bob"]}"]'), "bob's job")
    assert page.find_all(f'tr[data-id="{ids["alice"]}"]') == []


def test_exploding_layer_and_failed_job(browser, ui_api):
    client = ui_api.client
    # SGD with lr=1000 blows the weights up in the first epoch; ReLUs die and the loss stays finite.
    exploding = client.post("/v1/train", json=tiny_job(epochs=1, optimizer={"type": "sgd", "lr": 1000.0})).json()
    # Without a nonlinearity and with momentum the same step makes the logits overflow: the job fails.
    diverging = client.post("/v1/train", json=tiny_job(
        epochs=1, model=[{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
                         {"type": "flatten"}, {"type": "dense", "out_features": 10}],
        optimizer={"type": "sgd", "lr": 1000.0, "momentum": 0.99})).json()
    page = make_page(browser, ui_api, KEYS["alice"])
    page.open(f"/ui/jobs/{exploding['id']}")
    page.wait(lambda: page.text("#state") == "succeeded", "the exploding job to finish")
    rows = client.get(f"/v1/jobs/{exploding['id']}").json()["result"]["history"][0]["layers"]
    flagged = [r for r in rows if r["exploding"]]
    assert flagged, rows
    text = page.wait(lambda: page.text("#exploding"), "the exploding flag")
    for r in flagged:
        assert f"layer {r['index']} ({r['type']}) exploding at epoch 1" in text
    assert "exploding (epoch 1)" in page.text("#health")

    page.open(f"/ui/jobs/{diverging['id']}")
    page.wait(lambda: page.text("#state") == "failed", "the diverging job to fail")
    error = client.get(f"/v1/jobs/{diverging['id']}").json()["error"]
    shown = page.text("#error")
    assert f"failed at epoch {error['epoch']}, step {error['step']}: TrainingDiverged" in shown
    assert page.errors() == []


def test_convolution_job_page(browser, ui_api):
    x = {"shape": [1, 1, 6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}
    W = {"shape": [1, 1, 3], "datatype": "FP32", "data": [1, 0, -1]}
    done = ui_api.client.post("/v1/conv/forward", json={"x": x, "W": W, "stride": 2, "padding": 1}).json()
    page = make_page(browser, ui_api, KEYS["alice"])
    page.open(f"/ui/jobs/{done['job_id']}")
    page.wait(lambda: page.text("#state") == "succeeded", "the convolution job")
    page.wait(lambda: page.text('#conv-summary [data-key="Algorithm"]') == done["algorithm"], "its algorithm")
    assert page.text('#conv-summary [data-key="Device"]') == done["device"]
    params = page.text('#conv-summary [data-key="Parameters"]')
    assert "stride=2" in params and "padding=1" in params
    assert page.text('#conv-summary [data-key="Compute"]') != "—" and page.text('#conv-summary [data-key="Run"]') != "—"
    assert not page.find("#training").is_displayed() and not page.find("#download").is_displayed()
