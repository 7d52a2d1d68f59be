"""Label-name rules: normalisation, rejection of unsafe names, case canonicalisation, dir names."""
from __future__ import annotations

import pytest

from labeling.labels import MAX_LABEL_CHARS, canonical_label, dirname_to_label, label_to_dirname, normalize_label
from settings import PlatformError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  cat ", "cat"),
        ("golden \t  retriever", "golden retriever"),
        ("forêt", "forêt"),
        ("fore\u0302t", "forêt"),  # decomposed e + combining circumflex -> NFC
        ("山", "山"),
        ("Cats & Dogs", "Cats & Dogs"),
        ("a" * MAX_LABEL_CHARS, "a" * MAX_LABEL_CHARS),
    ],
)
def test_normalize_label_accepts_and_cleans(raw, expected):
    assert normalize_label(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("   \t ", "empty"),
        ("x" * 10_000, "10000 characters"),
        ("../../etc", "'/'"),
        ("/", "'/'"),
        ("a\\b", "'/'"),
        ("a\x00b", "control"),
        ("bell\x07", "control"),
        ("\x1b[31mred", "control"),
        ("unit\x1fsep", "control"),
        ("ab\u202ecd", "control"),
        (".", "start with '.'"),
        ("..", "start with '.'"),
        (".hidden", "start with '.'"),
        (None, "text"),
    ],
)
def test_normalize_label_rejects_with_clear_message(raw, fragment):
    with pytest.raises(PlatformError) as caught:
        normalize_label(raw)
    assert fragment in str(caught.value)
    assert len(str(caught.value)) < 200, "a huge label must not be echoed in full"


def test_canonical_label_maps_case_variants_to_known_spelling():
    assert canonical_label("CAT", ["dog", "Cat"]) == "Cat"
    assert canonical_label("FORÊT", ["forêt"]) == "forêt"
    assert canonical_label(" Zebra ", ["cat"]) == "Zebra", "an unknown class keeps the case typed"
    assert canonical_label("cat", ["Cat", "cat"]) == "cat", "an exact match wins over a case-only match"


@pytest.mark.parametrize("label", ["cat", "forêt", "山", "50% off", "a+b (c)", "x:y*z?", "ends with dot.", "é" * 64])
def test_label_to_dirname_is_one_safe_component_and_reversible(label, tmp_path):
    name = label_to_dirname(label)
    assert name not in ("", ".", "..")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert len(name.encode("utf-8")) <= 255
    for ch in ':*?"<>|':
        assert ch not in name
    created = tmp_path / name
    created.mkdir()
    assert created.parent == tmp_path
    assert dirname_to_label(name) == normalize_label(label)


def test_label_to_dirname_shortens_long_encodings_but_keeps_them_distinct(tmp_path):
    first, second = "🙂" * 63 + "a", "🙂" * 63 + "b"  # 12 bytes per encoded emoji: far over 255
    names = {label_to_dirname(first), label_to_dirname(second)}
    assert len(names) == 2
    for name in names:
        assert len(name.encode("utf-8")) <= 255
        (tmp_path / name).mkdir()


def test_label_to_dirname_rejects_what_normalize_rejects():
    with pytest.raises(PlatformError):
        label_to_dirname("../../etc")
