"""The engine is the only door: the app, the UI modules and the three CLIs reach the registry, the store,
the training jobs, the Hub and torch only through engine.py (read from the source's import statements)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FRONT_DOORS = ["app.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ui").glob("*.py")),
               "classifier/__main__.py", "training/__main__.py", "labeling/cli.py"]
INTERNALS = ("classifier.registry", "classifier.live", "classifier.predict", "labeling.store", "labeling.connection",
             "training.jobs", "training.run", "hub", "pymongo", "torch", "huggingface_hub")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("front", FRONT_DOORS)
def test_front_doors_use_the_engine_not_its_internals(front):
    reached = {name for name in imported_modules(ROOT / front)
               if any(name == inner or name.startswith(inner + ".") for inner in INTERNALS)}
    assert reached == set(), f"{front} reaches past the engine into {sorted(reached)}"


def test_only_the_hub_package_talks_to_the_hub():
    outside = [str(p.relative_to(ROOT)) for p in ROOT.glob("**/*.py")
               if p.parts[len(ROOT.parts)] not in ("hub", "tests", ".venv", "bench")
               and any(m.startswith("huggingface_hub") for m in imported_modules(p))]
    assert outside == []


def test_only_the_hub_package_loads_datasets_from_the_hub():
    """``datasets.load_dataset`` with a repo id downloads from the Hub: it is called in hub/ only."""
    calls = [str(p.relative_to(ROOT)) for p in ROOT.glob("**/*.py")
             if p.parts[len(ROOT.parts)] not in ("hub", "tests", ".venv", "bench")
             and any(isinstance(node, ast.Attribute) and node.attr == "load_dataset" for node in ast.walk(ast.parse(p.read_text())))]
    assert calls == []


def test_the_engine_never_imports_gradio():
    for part in (ROOT / "engine").glob("*.py"):
        assert not any(m.startswith("gradio") for m in imported_modules(part)), part.name
