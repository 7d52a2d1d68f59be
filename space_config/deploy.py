"""One-command deployment to a Hugging Face Space.

``python -m space_config deploy --space OWNER/NAME [--hardware zero-a10g] [--private] [--dry-run]``

Creates the Gradio Space if needed, makes its files exactly the app's files (``app.py``,
``settings.py``, ``engine/``, ``classifier/``, ``training/``, ``labeling/``, ``hub/``, ``scale/``, ``ui/``, plus this
folder's ``README.md``, ``requirements.txt`` and ``packages.txt`` (Debian packages: a C++ compiler);
never ``data/``, ``tests/``, ``.venv/`` or hidden files), sets the secrets (``HF_TOKEN``, ``APP_USERS``) and public variables (``HUB_MODEL_ID``,
``HUB_DATASET_ID``, ``HF_ALLOWED_USERS``) from this shell's environment, and requests hardware.
``--dry-run`` prints that plan (secret values hidden) and changes nothing.
"""
from __future__ import annotations

import argparse
import ast
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from hub.models import check_repo_id
from hub.space import HARDWARE, deploy
from settings import PlatformError, Settings, load_settings

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
APP_FILES = ("app.py", "settings.py")
APP_PACKAGES = ("engine", "classifier", "training", "labeling", "hub", "scale", "ui")
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".pem", ".key", ".p12", ".sqlite", ".db"}


@dataclass
class DeployPlan:
    """Everything a deploy will do; printed by ``--dry-run``."""

    space: str
    files: dict[str, Path]
    """Path in the Space repo → local file."""
    secrets: dict[str, str] = field(repr=False)
    variables: dict[str, str]
    hardware: str | None
    private: bool

    def describe(self) -> str:
        lines = [f"Space: {self.space} ({'private' if self.private else 'public'})", "Files:"]
        lines += [f"  {path}" for path in sorted(self.files)]
        lines.append("Secrets (values hidden): " + (", ".join(sorted(self.secrets)) or "none"))
        lines.append("Variables: " + (", ".join(f"{k}={v}" for k, v in sorted(self.variables.items())) or "none"))
        lines.append(f"Hardware: {self.hardware or 'unchanged (cpu-basic for a new Space)'}")
        return "\n".join(lines)


def _shippable(rel: Path) -> bool:
    return not any(part.startswith(".") or part == "__pycache__" for part in rel.parts) \
        and rel.suffix not in SKIPPED_SUFFIXES


def space_files(root: Path = ROOT) -> dict[str, Path]:
    """The files a Space needs, by their path in the Space repo."""
    files = {name: root / name for name in APP_FILES if (root / name).is_file()}
    if "app.py" not in files:
        raise PlatformError(f"No app.py in {root}: nothing to deploy")
    for package in APP_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and _shippable(rel):
                files[rel.as_posix()] = path
    files["README.md"] = root / "space_config" / "README.md"
    files["requirements.txt"] = root / "space_config" / "requirements.txt"
    files["packages.txt"] = root / "space_config" / "packages.txt"
    return files


def check_imports_shipped(files: dict[str, Path], root: Path) -> None:
    """Refuse a deploy whose Python files import a project module that would be left behind."""
    shipped_tops = {rel.split("/")[0].removesuffix(".py") for rel in files}
    for rel, path in files.items():
        if not rel.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(path.read_bytes(), filename=rel)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for top in {name.split(".")[0] for name in names} - shipped_tops:
                if (root / f"{top}.py").is_file() or (root / top / "__init__.py").is_file():
                    raise PlatformError(f"{rel} imports {top}, which the deploy leaves out (see APP_FILES/APP_PACKAGES)")


def check_no_secrets(files: dict[str, Path], secrets: dict[str, str]) -> None:
    """Refuse to upload a file that contains a secret's value (the message names the file, not the value)."""
    for rel, path in files.items():
        data = path.read_bytes()
        for key, value in secrets.items():
            if len(value) >= 8 and value.encode() in data:
                raise PlatformError(f"{rel} contains the value of {key}; remove it before deploying")


def plan_deploy(space: str, settings: Settings, hardware: str | None = None, private: bool = False,
                root: Path = ROOT) -> DeployPlan:
    """Work out files, secrets and variables for ``space`` from the settings (the environment)."""
    check_repo_id(space, "--space")
    secrets = {"HF_TOKEN": settings.hf_token} if settings.hf_token else {}
    if settings.app_users:
        secrets["APP_USERS"] = ",".join(f"{user}:{password}" for user, password in settings.app_users.items())
    variables = {name: value for name, value in (
        ("HUB_MODEL_ID", settings.hub_model_id),
        ("HUB_DATASET_ID", settings.hub_dataset_id),
        ("HF_ALLOWED_USERS", ",".join(settings.oauth_allowed)),
    ) if value}
    files = space_files(root)
    check_imports_shipped(files, root)
    check_no_secrets(files, secrets)
    return DeployPlan(space, files, secrets, variables, hardware, private)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m space_config", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("deploy", help="create or update the Space and its settings",
                              description="Reads HF_TOKEN, APP_USERS, HUB_MODEL_ID, HUB_DATASET_ID, "
                                          "HF_ALLOWED_USERS (and HF_ENDPOINT) from the environment.")
    cmd.add_argument("--space", required=True, help="Space id, OWNER/NAME")
    cmd.add_argument("--hardware", choices=HARDWARE, metavar="NAME",
                     help="hardware to request: cpu-basic, cpu-upgrade, zero-a10g, t4-small, … "
                          "(default: leave as is; a new Space starts on cpu-basic)")
    cmd.add_argument("--private", action="store_true", help="create the Space as private (ignored if it exists)")
    cmd.add_argument("--dry-run", action="store_true", help="print the files, secrets and variables; change nothing")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, root: Path = ROOT) -> int:
    """CLI entry point; returns the exit status. ``env`` (default: the environment) and ``root`` are for tests."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(env)
        plan = plan_deploy(args.space, settings, hardware=args.hardware, private=args.private, root=root)
        if args.dry_run:
            print(plan.describe())
            return 0
        if not settings.hf_token:
            raise PlatformError("HF_TOKEN must be set (a token with write access) to deploy")
        if not settings.hub_dataset_id:
            logger.warning("HUB_DATASET_ID is not set: labels on the Space will be lost when it restarts")
        commit = deploy(plan, settings.hf_token, endpoint=settings.hub_endpoint)
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Deployed {plan.space} at commit {commit}")
    return 0
