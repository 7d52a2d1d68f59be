"""Results: one :class:`Figure` per measured number, written as ``results.json`` and a ``RESULTS.md`` table.

A section is a plain dict: ``name``, ``title``, ``method`` (what was measured and against what),
``figures`` (list of Figure), optional ``tables`` (``{"title", "columns", "rows"}``), ``notes``,
``details`` (raw measurements) and ``seconds`` (how long the section took).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Figure:
    """One measured number, next to the baseline measured in the same run."""

    name: str
    unit: str
    ours: float | None
    baseline: float | None = None
    baseline_name: str = ""
    higher_is_better: bool = False
    target: str = ""
    met: bool | None = None
    distance: str = ""
    """How far from the target, in words (e.g. '1.6× short', 'met with 2.1 s to spare')."""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times better ours is (>1 better): baseline ÷ ours for times, ours ÷ baseline for rates."""
        if self.ours in (None, 0) or self.baseline in (None, 0) or self.unit == "accuracy":
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        return out


def fmt(value: float | None, unit: str = "") -> str:
    """A number as measured, with sensible significant digits (never rounded to flatter it)."""
    if value is None:
        return "—"
    if unit == "accuracy":
        return f"{value:.4f}"
    magnitude = abs(value)
    text = f"{value:,.0f}" if magnitude >= 1000 else f"{value:.1f}" if magnitude >= 100 else \
        f"{value:.2f}" if magnitude >= 1 else f"{value:.3f}"
    return f"{text} {unit}".strip()


def _ratio_text(f: Figure) -> str:
    if f.unit == "accuracy" and f.ours is not None and f.baseline is not None:
        return f"{f.ours - f.baseline:+.4f}"
    if f.ratio is None:
        return "—"
    word = ("faster" if f.unit in ("s", "images/s") else "better") if f.ratio >= 1 else \
        ("slower" if f.unit in ("s", "images/s") else "worse")
    return f"{f.ratio:.2f}× {word}" if f.ratio >= 1 else f"{1 / f.ratio:.2f}× {word}"


def _met_text(met: bool | None) -> str:
    return "—" if met is None else "**met**" if met else "**not met**"


def _table(columns: list[str], rows: list[list]) -> list[str]:
    clean = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in clean]


def _figures_table(figures: list[Figure]) -> list[str]:
    rows = [[f.name, f"{fmt(f.baseline, f.unit)}" + (f" ({f.baseline_name})" if f.baseline_name else ""),
             fmt(f.ours, f.unit), _ratio_text(f), f.target or "—",
             (f.distance or "—") if f.met is None else _met_text(f.met) + (f" — {f.distance}" if f.distance else ""),
             f.note]
            for f in figures]
    return _table(["figure", "baseline", "ours", "ours vs baseline", "target", "met?", "note"], rows)


def _machine_lines(machine: dict, run: dict) -> list[str]:
    rows = [["CPU", machine.get("cpu_model")],
            ["cores (usable by this process)", f"{machine.get('cores')} ({machine.get('cores_usable')})"],
            ["torch threads", machine.get("torch_threads")], ["memory", f"{machine.get('memory_gb')} GB"],
            ["python / torch / transformers / pillow",
             f"{machine.get('python')} / {machine.get('torch')} / {machine.get('transformers')} / {machine.get('pillow')}"],
            ["date (UTC)", machine.get("date_utc")],
            ["load average at start (1 min)", machine.get("load_average_1min")],
            ["other processes' CPU during the run", f"{run.get('other_processes_cores')} cores on average"]]
    return _table(["", ""], rows)


def _targets_lines(sections: list[dict]) -> list[str]:
    rows = [[s["title"], f.name, fmt(f.ours, f.unit), f.target, _met_text(f.met), f.distance]
            for s in sections for f in s.get("figures", []) if f.target]
    return _table(["section", "figure", "measured", "target", "met?", "distance"], rows) if rows else ["No targets measured."]


def render_markdown(results: dict) -> str:
    run, sections = results["run"], results["sections"]
    lines = ["# Benchmark results", "",
             f"`{run['command']}` — {run['mode']} run, {run['total_seconds']:.0f} s in all "
             f"({run['total_seconds'] / 60:.1f} min), of which {run.get('preparation_seconds', 0):.0f} s untimed "
             "preparation that later runs reuse (writing the JPEGs, computing the stored features under "
             f"`bench/_work/`). Data: {run.get('data', '—')}. "
             "Every figure is a median of the repetitions listed in `results.json`, taken after a warm-up, "
             "with its baseline measured in the same run (interleaved where both are short).", "",
             "## Machine", ""] + _machine_lines(results["machine"], run) + ["", "## Targets", ""] + \
        _targets_lines(sections)
    for number, section in enumerate(sections, 1):
        lines += ["", f"## {number}. {section['title']}", ""]
        if section.get("error"):
            lines += [f"**Not measured:** {section['error']}", ""]
        if section.get("method"):
            lines += [section["method"], ""]
        if section.get("figures"):
            lines += _figures_table(section["figures"]) + [""]
        for table in section.get("tables", []):
            lines += [f"**{table['title']}**", ""] + _table(table["columns"], table["rows"]) + [""]
        if section.get("paragraph"):
            lines += [section["paragraph"], ""]
        for note in section.get("notes", []):
            lines.append(f"- {note}")
        lines.append(f"\n_Section time: {section.get('seconds', 0):.0f} s; other processes used "
                     f"{section.get('other_processes_cores', '?')} cores on average meanwhile._")
    return "\n".join(lines).rstrip() + "\n"


def _jsonable(section: dict) -> dict:
    out = dict(section)
    out["figures"] = [f.to_dict() for f in section.get("figures", [])]
    return out


def write_results(results: dict, out_dir: Path, stem: str | None = None) -> tuple[Path, Path]:
    """Write ``results.json`` and ``RESULTS.md`` into ``out_dir`` (each replaced atomically).

    With ``stem`` (a partial run) the files are ``<stem>.json`` and ``<stem>.md`` instead, so they never replace
    or join the full run's report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dict(results, sections=[_jsonable(s) for s in results["sections"]])
    paths = (out_dir / f"{stem}.json", out_dir / f"{stem}.md") if stem else \
        (out_dir / "results.json", out_dir / "RESULTS.md")
    texts = (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", render_markdown(results))
    for path, text in zip(paths, texts):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; these are ordinary, shareable files
        os.replace(tmp, path)
    return paths
