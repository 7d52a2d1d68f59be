"""The files a run leaves beside its weights: ``metrics.json``, ``params.json`` and a model card."""
from __future__ import annotations

import html
import json
from pathlib import Path


def _yaml_str(value: str) -> str:
    return json.dumps(str(value), ensure_ascii=False)


def model_card(version: str, info: dict, metrics: dict, params: dict) -> str:
    """A ``README.md`` with Hub front matter (so the Hub renders it and its widget works) and the figures."""
    classes = info.get("classes", [])
    dataset = info.get("dataset") or "custom"
    acc, f1 = metrics.get("accuracy"), metrics.get("macro_f1")
    front = [
        "---", "library_name: transformers", "pipeline_tag: image-classification",
        "tags:", "- image-classification", f"- {info.get('mode', 'head')}", "- vision-labeling-platform",
        "datasets:", f"- {_yaml_str(dataset)}",
        "model-index:", f"- name: {_yaml_str(version)}", "  results:", "  - task:",
        "      type: image-classification", "      name: Image Classification", "    dataset:",
        f"      name: {_yaml_str(dataset)}", "      type: imagefolder", "    metrics:",
    ]
    for name, value in (("accuracy", acc), ("f1", f1)):
        if value is not None:
            front += [f"    - type: {name}", f"      value: {value}", f"      name: validation {name}"]
    front.append("---")
    lines = [
        f"# Image classifier {version}", "",
        f"Trained in **{info.get('mode')}** mode on {metrics.get('train_size', '?')} images "
        f"(validated on {metrics.get('val_size', '?')}, {metrics.get('evaluated_on', 'validation')} split) "
        f"in {metrics.get('wall_time_s', '?')} s. Backbone: `{info.get('backbone')}`.", "",
        f"Input: {info.get('resolution', '?')} px, {info.get('precision', 'float32')} ({info.get('graph', 'eager')}).", "",
        "| metric | value |", "|---|---|",
        f"| accuracy | {acc} |", f"| macro F1 | {f1} |", f"| expected calibration error | {metrics.get('ece')} |", "",
        "## Classes", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
    ]
    for name in classes:
        row = metrics.get("per_class", {}).get(name, {})
        lines.append(f"| {_table_cell(name)} | {row.get('precision', '')} | {row.get('recall', '')} | {row.get('f1', '')} | {row.get('support', '')} |")
    lines += ["", "## Parameters", "", "```json", json.dumps(params, indent=2, ensure_ascii=False), "```", "",
              "## Use", "", "```python", "from transformers import pipeline",
              f"classify = pipeline(\"image-classification\", model=\"<this folder or repo>\", revision=\"{version}\")",
              "classify(\"photo.jpg\")", "```", ""]
    lines += data_health_lines(metrics.get("data_health"))
    if info.get("dataset_revision"):
        lines.insert(2, f"Labels from dataset revision `{info['dataset_revision']}`.\n")
    return "\n".join(front + [""] + lines)


def _table_cell(text: str) -> str:
    """A class name (user input) as a Markdown table cell that shows it as text, in the app and on the model card."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def data_health_lines(health: dict | None) -> list[str]:
    """The card's "Data health" section (markdown lines) from ``metrics["data_health"]``."""
    if not health:
        return []
    if not health.get("computed"):
        return ["## Data health", "", f"Not computed: {health.get('reason', 'unknown')}.", ""]
    sampled = f" (a random sample of {health['images']})" if health.get("sampled") else ""
    lines = ["## Data health", "",
             f"Audited {health['audited']} training images{sampled} with out-of-fold probabilities of the linear "
             "head and their nearest neighbours in the backbone's embedding space.", "",
             "| figure | value |", "|---|---|",
             f"| estimated label issues | {health['estimated_issues']} |",
             f"| estimated label-noise rate | {health['estimated_noise_rate']:.1%} |",
             f"| out-of-fold accuracy | {health['oof_accuracy']} |",
             f"| near-duplicate sets | {health['duplicate_sets']} ({health['duplicate_images']} images) |",
             f"| outliers | {health['outliers']} |"]
    since = health.get("since_previous")
    if since:
        lines += [f"| issues fixed since {since['version']} | {since['issues_fixed']} |",
                  f"| new issues found since {since['version']} | {since['issues_found']} |",
                  f"| change in images | {since['images']:+d} |",
                  f"| change in estimated noise rate | {since['estimated_noise_rate']:+.1%} |",
                  f"| change in out-of-fold accuracy | {since['oof_accuracy']:+.4f} |"]
    lines += ["", "| class | images | out-of-fold accuracy |", "|---|---|---|"]
    lines += [f"| {_table_cell(name)} | {row['count']} | {row['oof_accuracy']} |" for name, row in health.get("per_class", {}).items()]
    return lines + [""]


def write_run_files(folder: Path, metrics: dict, params: dict) -> None:
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    (folder / "params.json").write_text(json.dumps(params, indent=2, ensure_ascii=False))


def card_writer(info: dict, metrics: dict, params: dict):
    """A ``finalize`` callback for the registry: writes the card once the version name is known."""
    def finalize(folder: Path, version: str) -> None:
        (folder / "README.md").write_text(model_card(version, info, metrics, params), encoding="utf-8")
    return finalize
