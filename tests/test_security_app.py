"""Issue 'Reliability and security', who may write and what is never shown, on one launched app that has every
secret set: APP_USERS passwords, an HF_TOKEN (with Hub publishing pointed at a closed local port, so its error
paths run too) and a MongoDB URI with a password for a SecantusDB server in its own process started with --auth.

Writes (save labels, retrain, activate) are refused without a login through the API and through the browser's
own protocol (the private UI events), allowed with HTTP Basic credentials or after the login form; anonymous
predictions work. Afterwards no secret appears in any response, page, config, log line or file under DATA_DIR.
"""
from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from conftest import DatabaseProcess, IsolatedApp, data_dir_with_backbone, free_port, make_image
from labeling.store import open_store
from settings import load_settings

pytestmark = pytest.mark.slow

HF_TOKEN = "hf_SECRETtoken123"
ALICE_PASSWORD, BOB_PASSWORD = "s3cret-pw", "Bob-Pa55-99"
MONGO_USER, MONGO_PASSWORD = "labeler", "M0ngo-SECRET-pw"
LOGIN_REFUSED = "Log in to do this"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class BrowserSession:
    """What the page itself does: ``queue/join`` with a fn_index and one ``session_hash`` (so ``gr.State``,
    e.g. the logged-in user, lives on the server between calls), then the result from the event stream.
    Inputs and outputs are named by the component's ``elem_id`` or label; unnamed inputs get their default."""

    def __init__(self, url: str, seen: list[str]):
        self.url, self.seen = url, seen
        self.session_hash = uuid.uuid4().hex[:11]
        self.http = httpx.Client(timeout=120)
        config = self.http.get(url + "config").json()
        self.events = {d["api_name"]: d for d in config["dependencies"]}
        self.components = {c["id"]: c for c in config["components"]}

    def _name(self, component_id: int) -> str | None:
        props = self.components[component_id].get("props", {})
        return props.get("elem_id") or props.get("label")

    def call(self, api_name: str, **values) -> dict:
        """Run a UI event; returns ``{"error": …}`` or ``{"data": {output name: value}}``."""
        event = self.events[api_name]
        data = [values.get(self._name(i), self.components[i].get("props", {}).get("value")) for i in event["inputs"]]
        body = {"data": data, "event_data": None, "fn_index": event["id"], "trigger_id": event["targets"][0][0],
                "session_hash": self.session_hash}
        event_id = self.http.post(self.url + "gradio_api/queue/join", json=body).json()["event_id"]
        params = {"session_hash": self.session_hash}
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params=params) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    self.seen.append(json.dumps(message))
                    output = message["output"]
                    if "error" in output:
                        return {"error": output["error"] or ""}
                    return {"data": {self._name(i): v for i, v in zip(event["outputs"], output["data"])}}
        raise AssertionError(f"no result for {api_name}")

    def grid(self, fn_name: str, body: dict):
        """Call one of the review grid's server functions, as its script does."""
        grid_id = next(i for i, c in self.components.items() if c.get("props", {}).get("elem_id") == "review")
        response = self.http.post(self.url + "gradio_api/component_server/", json={
            "data": body, "component_id": grid_id, "session_hash": self.session_hash, "fn_name": fn_name})
        self.seen.append(response.text)
        return response.json()

    def upload(self, path: Path) -> dict:
        files = {"files": (path.name, path.read_bytes())}
        stored = self.http.post(self.url + "gradio_api/upload", files=files).json()[0]
        return {"path": stored, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def secured(tmp_path_factory, backbone_dir, dataset_dir):
    root = tmp_path_factory.mktemp("secured")
    db = DatabaseProcess(root / "mongo")
    db.start()
    db.create_user(MONGO_USER, MONGO_PASSWORD)
    db.stop()
    db.auth = True
    db.start()
    uri = f"mongodb://{MONGO_USER}:{MONGO_PASSWORD}@{db.hosts}/platform?authSource=admin"
    app = IsolatedApp(data_dir_with_backbone(root, backbone_dir), root / "cwd", {
        "DATASET": str(dataset_dir), "APP_USERS": f"alice:{ALICE_PASSWORD},bob:{BOB_PASSWORD}", "HF_TOKEN": HF_TOKEN,
        "MONGODB_URI": uri, "HUB_MODEL_ID": "alice/scenes", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "HF_HUB_OFFLINE": "0"})
    try:
        app.start()
        alice = app.client(headers=basic("alice", ALICE_PASSWORD))
        assert alice.predict(mode="head", epochs=20, api_name="/retrain")["version"] == "v1"
        images = root / "images"
        images.mkdir()
        for i in range(4):
            make_image(("ellipse", "rectangle")[i % 2], (200, 90, 60), seed=61_000 + i).save(images / f"{i}.jpg")
        yield {"app": app, "uri": uri, "images": sorted(images.iterdir()), "seen": []}
    finally:
        app.kill()
        db.stop()


def record(seen: list[str], fn, *args, **kwargs):
    """Call a gradio_client endpoint, remembering what came back (result or error text) for the secret scan."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:
        seen.append(f"{type(exc).__name__}: {exc}")
        raise
    seen.append(json.dumps(result, default=str))
    return result


def test_anonymous_users_predict_but_every_write_is_refused(secured):
    app, seen = secured["app"], secured["seen"]
    client = app.client()
    rows = record(seen, client.predict, [handle_file(str(p)) for p in secured["images"]], api_name="/predict")
    assert len(rows) == 4 and all("error" not in r for r in rows)
    for kwargs in ({"labels": [{"sha256": rows[0]["sha256"], "label": "circles"}], "api_name": "/save_labels"},
                   {"mode": "head", "api_name": "/retrain"}, {"version": "v1", "api_name": "/activate"}):
        with pytest.raises(AppError, match=LOGIN_REFUSED):
            record(seen, client.predict, **kwargs)
    status = record(seen, client.predict, api_name="/status")
    assert status["labelled_images"] == 0 and status["versions"] == 1 and status["active_version"] == "v1"


@pytest.mark.parametrize("headers", [basic("alice", "wrong-pw"), basic("mallory", ALICE_PASSWORD), basic("alice", ""),
                                     basic("bob", ALICE_PASSWORD), {"Authorization": "Basic !!!not-base64"},
                                     {"Authorization": f"Bearer {ALICE_PASSWORD}"}])
def test_wrong_or_malformed_credentials_are_refused(secured, headers):
    client = secured["app"].client(headers=headers)
    with pytest.raises(AppError, match=LOGIN_REFUSED):
        record(secured["seen"], client.predict, "v1", api_name="/activate")
    with pytest.raises(AppError, match=LOGIN_REFUSED):
        record(secured["seen"], client.predict, [{"sha256": "a" * 64, "label": "x"}], api_name="/save_labels")


def test_basic_credentials_allow_writes_and_the_history_names_the_user(secured):
    app, seen = secured["app"], secured["seen"]
    alice = app.client(headers=basic("alice", ALICE_PASSWORD))
    trained = record(seen, alice.predict, mode="head", epochs=20, api_name="/retrain")
    assert trained["version"] == "v2"
    rows = record(seen, alice.predict, [handle_file(str(p)) for p in secured["images"]], api_name="/predict")
    saved = record(seen, alice.predict, [{"sha256": rows[0]["sha256"], "label": "circles"}], api_name="/save_labels")
    assert saved == {"saved": 1, "new_classes": [], "rejected": []}
    assert record(seen, alice.predict, "v1", api_name="/activate") == {"active": "v1"}
    with pytest.raises(AppError, match="v7 is not here and could not be fetched from the Hub"):  # Hub error path
        record(seen, alice.predict, "v7", api_name="/activate")
    with pytest.raises(AppError, match="must not contain '/'"):
        record(seen, alice.predict, [{"sha256": rows[0]["sha256"], "label": "../x"}], api_name="/save_labels")
    store = open_store(load_settings({"DATA_DIR": str(app.data_dir), "MONGODB_URI": secured["uri"]}))
    try:
        history = store.history(rows[0]["sha256"])
    finally:
        store.close()
    assert [(h["label"], h["user"]) for h in history] == [("circles", "alice")]


def test_the_ui_events_need_the_login_form_too(secured):
    app, seen = secured["app"], secured["seen"]
    page = BrowserSession(app.url, seen)
    page.call("models_refresh")  # as the Models tab does: the version picker now offers v1
    predicted = page.call("uploaded", upload=[page.upload(p) for p in secured["images"][:2]])
    rows = json.loads(predicted["data"]["review"])["rows"]
    edits = [{"sha256": r["sha256"], "label": "squares", "revision": r["revision"]} for r in rows]
    refused = page.grid("save_edits", {"edits": edits, "token": None})
    assert len(refused) == 2 and all(LOGIN_REFUSED in r["error"] for r in refused)
    for api_name, values in (("train", {}), ("activate_version", {"version": "v1"})):
        assert LOGIN_REFUSED in page.call(api_name, **values).get("error", ""), api_name
    assert "Wrong user name or password" in page.call("login", user="alice", password="not-it").get("error", "")
    assert "Wrong user name or password" in page.call("login", user="alice", password=ALICE_PASSWORD + " ")["error"]
    assert LOGIN_REFUSED in page.call("activate_version", version="v1").get("error", "")
    logged_in = page.call("login", user="bob", password=BOB_PASSWORD)
    assert "Logged in as **bob**." in logged_in["data"].values()
    # the logged-in user is a gr.State: it stays on the server, the page never holds it
    assert "bob" not in [v for v in logged_in["data"].values() if v != "Logged in as **bob**."]
    token = logged_in["data"]["review-user"].split('data-token="')[1].split('"')[0]  # bob's, signed by the server
    saved = page.grid("save_edits", {"edits": edits, "token": token})
    assert [(r["status"], r["updated_by"]) for r in saved] == [("saved", "bob")] * 2
    assert all(r["status"] == "error" for r in page.grid("save_edits", {"edits": edits, "token": "alice." + "0" * 64}))
    other_tab = BrowserSession(app.url, seen)  # a login is per browser session
    other_tab.call("models_refresh")
    assert LOGIN_REFUSED in other_tab.call("activate_version", version="v1").get("error", "")


def test_no_secret_in_pages_responses_logs_or_files(secured):
    app, seen = secured["app"], secured["seen"]
    client = app.client()
    status = record(seen, client.predict, api_name="/status")
    assert "Cannot reach the Hugging Face Hub" in status["hub_error"]  # the Hub error path did run
    record(seen, client.predict, api_name="/models")
    with pytest.raises(AppError):  # an error path that knows the URI: the store refuses a bad label item
        record(seen, app.client(headers=basic("alice", ALICE_PASSWORD)).predict, [{"sha256": "0" * 64, "label": "x"}],
               api_name="/save_labels")
    http = httpx.Client(timeout=60)
    pages = {path: http.get(app.url + path).text
             for path in ("", "config", "gradio_api/info", "gradio_api/info?all_endpoints=true",
                          "gradio_api/openapi.json", "gradio_api/startup-events")}
    assert "Image classifier" in pages[""] and '"dependencies"' in pages["config"]
    files = {str(p): p.read_bytes() for p in app.data_dir.rglob("*") if p.is_file() and "backbones" not in p.parts}
    cards = [name for name in files if name.endswith("README.md")]
    assert cards and any(name.endswith("metrics.json") for name in files)
    assert any(name.endswith("params.json") for name in files)
    secrets = {"HF_TOKEN": HF_TOKEN, "MongoDB password": MONGO_PASSWORD, "alice's password": ALICE_PASSWORD,
               "bob's password": BOB_PASSWORD,
               "alice's Basic header": basic("alice", ALICE_PASSWORD)["Authorization"].split()[1]}
    log = app.log()
    assert "Running on local URL" in log and len(seen) > 20
    for what, secret in secrets.items():
        assert secret not in log, f"{what} is in the app's log"
        assert not [s for s in seen if secret in s], f"{what} is in an API response or error"
        assert not [p for p, text in pages.items() if secret in text], f"{what} is in a page"
        assert not [p for p, body in files.items() if secret.encode() in body], f"{what} is in a file under DATA_DIR"
