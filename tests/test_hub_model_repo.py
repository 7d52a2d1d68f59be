"""Model versions on the Hub (classifier/hub.py) against the Hub stand-in, with the real client."""
import json
import logging
import time
from pathlib import Path

import pytest

from hub.models import HubModelRepo, PushQueue
from settings import PlatformError
from tests.hub_standin import logged_text, running_standin

TOKEN = "hf_alice_0123456789abcdef"
OTHER_TOKEN = "hf_bob_0123456789abcdef"
REPO = "alice/flowers"


@pytest.fixture
def hub(tmp_path, monkeypatch, caplog):
    tokens = {TOKEN: "alice", OTHER_TOKEN: "bob"}
    with running_standin(monkeypatch, tmp_path, caplog, tokens, secrets=list(tokens), level=logging.DEBUG) as standin:
        yield standin
    assert "alice/flowers" in logged_text(caplog)  # the secrets check reads real log output


def make_version(root, version, labels=("daisy", "rose"), extra=None):
    """A tiny stand-in for a checkpoint folder (small dummy files, no real model)."""
    folder = root / version
    folder.mkdir(parents=True)
    config = {"architectures": ["MobileNetV2ForImageClassification"],
              "id2label": {str(i): name for i, name in enumerate(labels)}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4 + version.encode())
    (folder / "preprocessor_config.json").write_text('{"size": {"height": 224, "width": 224}}')
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    (folder / "version.json").write_text(json.dumps({"version": version}))
    card = f"---\nlibrary_name: transformers\ntags: [image-classification]\n---\n# {version}\n"
    (folder / "README.md").write_text(card)
    for name, content in (extra or {}).items():
        (folder / name).write_text(content)
    return folder


def assert_clean(message: str) -> None:
    assert TOKEN not in message and OTHER_TOKEN not in message
    assert "Traceback" not in message


def test_push_two_versions_tags_files_and_card(hub, tmp_path):
    repo = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint)
    sha1 = repo.push_version(make_version(tmp_path, "v1", extra={"old_only.txt": "x"}), "v1", "Train v1")
    sha2 = repo.push_version(make_version(tmp_path, "v2", labels=("daisy", "rose", "tulip")), "v2", "Train v2")

    stored = hub.repo(REPO)
    assert stored.tags == {"v1": sha1, "v2": sha2} and sha1 != sha2
    assert stored.branches["main"] == sha2
    v1, v2 = stored.files("v1"), stored.files("v2")
    assert "old_only.txt" in v1 and "old_only.txt" not in v2  # main mirrors the pushed folder
    assert json.loads(v2["config.json"])["id2label"]["2"] == "tulip"
    assert v2["README.md"].startswith(b"---\nlibrary_name: transformers")
    assert v2["version.json"] == b'{"version": "v2"}'
    assert repo.list_versions() == ["v1", "v2"]
    assert any(r.path == "/api/validate-yaml" for r in hub.requests)  # the card's metadata was checked


def test_download_version_into_fresh_folder(hub, tmp_path):
    repo = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint)
    repo.push_version(make_version(tmp_path / "src", "v1"), "v1", "Train v1")
    repo.push_version(make_version(tmp_path / "src", "v2", labels=("a", "b", "c")), "v2", "Train v2")

    fresh = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint)
    folder = fresh.download_version("v1", tmp_path / "models" / "v1")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".gitattributes", "README.md", "config.json", "metrics.json", "model.safetensors",
                     "preprocessor_config.json", "version.json"]
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "daisy", "1": "rose"}
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "src/v1/model.safetensors").read_bytes()
    assert not any(p.name.startswith(".v1-") for p in folder.parent.iterdir())  # no staging left

    with pytest.raises(PlatformError, match="not empty"):
        fresh.download_version("v2", folder)
    with pytest.raises(PlatformError, match="[Rr]evision not found"):
        fresh.download_version("v9", tmp_path / "models" / "v9")
    assert not (tmp_path / "models" / "v9").exists()


def test_versions_sort_numerically_and_retag_moves(hub, tmp_path):
    repo = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint)
    for number in (2, 10, 1):
        repo.push_version(make_version(tmp_path, f"v{number}"), f"v{number}", f"Train v{number}")
    assert repo.list_versions() == ["v1", "v2", "v10"]
    again = repo.push_version(make_version(tmp_path / "again", "v2", labels=("x", "y")), "v2", "Retrain v2")
    assert hub.repo(REPO).tags["v2"] == again
    with pytest.raises(PlatformError, match="looks like 'v3'"):
        repo.push_version(tmp_path / "v1", "latest", "bad name")


def test_active_version_is_shared_through_the_hub(hub, tmp_path):
    repo = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint)
    repo.push_version(make_version(tmp_path, "v1"), "v1", "Train v1")
    assert repo.read_active() is None
    repo.write_active("v1")
    repo.push_version(make_version(tmp_path, "v2"), "v2", "Train v2")  # keeps active.json on main
    second_app = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint)
    assert second_app.read_active() == "v1"
    with pytest.raises(PlatformError, match="v7 is not a version"):
        second_app.write_active("v7")


def test_private_repo_needs_the_token(hub, tmp_path):
    repo = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint, private=True)
    repo.push_version(make_version(tmp_path, "v1"), "v1", "Train v1")
    assert hub.repo(REPO).private
    assert repo.download_version("v1", tmp_path / "ok").is_dir()

    anonymous = HubModelRepo(REPO, None, endpoint=hub.endpoint)
    for call in (anonymous.list_versions, lambda: anonymous.download_version("v1", tmp_path / "anon")):
        with pytest.raises(PlatformError, match="HF_TOKEN is missing or invalid") as info:
            call()
        assert_clean(str(info.value))
    assert not any(r.authorized for r in hub.requests if r.path.endswith("/refs") and r.status == 401)

    with pytest.raises(PlatformError, match="alice/flowers") as info:
        HubModelRepo(REPO, OTHER_TOKEN, endpoint=hub.endpoint).push_version(tmp_path / "v1", "v1", "not mine")
    assert_clean(str(info.value))


@pytest.mark.parametrize("outage", ["down", "closed"])
def test_hub_outage_is_a_clear_platform_error(hub, tmp_path, outage):
    repo = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint)
    folder = make_version(tmp_path, "v1")
    if outage == "down":
        hub.down = True
        expected = r"unavailable \(HTTP 503\)"
    else:
        hub.refuse_connections()
        expected = "Cannot reach the Hugging Face Hub"
    started = time.monotonic()
    for call in (lambda: repo.push_version(folder, "v1", "Train v1"), repo.list_versions,
                 lambda: repo.download_version("v1", tmp_path / "dl"), repo.read_active):
        with pytest.raises(PlatformError, match=expected) as info:
            call()
        assert_clean(str(info.value))
    assert time.monotonic() - started < 10  # fails fast, no long client-side retry loops


def test_push_queue_retries_a_failed_push(hub, tmp_path):
    queue = PushQueue(HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint), attempts=3, backoff_s=(0.05,))
    try:
        hub.fail_next(1, status=503, path_contains="/api/repos/create")
        started = time.monotonic()
        queue.submit("v1", make_version(tmp_path, "v1"), "Train v1")
        assert time.monotonic() - started < 0.5 and queue.statuses()["v1"]["state"] == "pending"
        assert queue.wait(timeout=20)
        status = queue.statuses()["v1"]
        assert status["state"] == "pushed" and status["attempts"] == 2 and status["reason"] is None
        assert hub.repo(REPO).tags["v1"] == status["commit"]
    finally:
        queue.close()


def test_push_queue_gives_up_then_manual_retry_succeeds(hub, tmp_path):
    queue = PushQueue(HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint), attempts=2, backoff_s=(0.05,))
    try:
        hub.fail_next(2, status=503, path_contains="/api/repos/create")
        queue.submit("v1", make_version(tmp_path, "v1"), "Train v1")
        assert queue.wait(timeout=20)
        failed = queue.statuses()["v1"]
        assert failed["state"] == "failed" and failed["attempts"] == 2
        assert "unavailable (HTTP 503)" in failed["reason"]
        assert_clean(failed["reason"])
        queue.retry("v1")
        assert queue.wait(timeout=20)
        assert queue.statuses()["v1"]["state"] == "pushed"
        assert "v1" in hub.repo(REPO).tags
        with pytest.raises(PlatformError):
            queue.retry("v5")
    finally:
        queue.close()


def test_a_hub_id_backbone_is_fetched_through_the_hub_package_into_a_local_folder(hub, tmp_path, monkeypatch, backbone_dir):
    """BACKBONE as a Hub id: resolve_backbone hands from_pretrained a local folder fetched by hub.models."""
    from classifier.backbone import load_model_and_processor, resolve_backbone
    from settings import get_settings
    repo = HubModelRepo(REPO, TOKEN, endpoint=hub.endpoint)
    repo.push_version(backbone_dir, "v1", "A backbone")
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    get_settings.cache_clear()
    try:
        folder = Path(resolve_backbone(REPO, tmp_path / "backbones"))
    finally:
        get_settings.cache_clear()
    assert folder.is_dir() and (folder / "config.json").is_file() and folder.is_relative_to(tmp_path / "hf_home")
    model, _ = load_model_and_processor(str(folder))
    original, _ = load_model_and_processor(str(backbone_dir))
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), original.state_dict().values()))
