"""The allocator setting of classifier/memory.py, observed from fresh processes (allocator state is per
process): with it, repeated forward passes reuse the memory of the first one's activations; without it,
glibc maps and page-faults them afresh on every pass."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from settings import load_settings

REPO = Path(__file__).resolve().parent.parent
PROBE = """
import json, resource
import classifier  # applies the setting, as every entry point does
from classifier.memory import keep_freed_memory
import torch
conv = torch.nn.Conv2d(32, 96, 1).eval()
x = torch.randn(16, 32, 112, 112)  # the shape of MobileNetV2's first expansion on a 16-image batch
faults = []
with torch.inference_mode():
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.relu(conv(x)).mean()  # two 73 MiB activations, freed at the end of the line
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"state": keep_freed_memory(), "faults": sum(faults[4:])}))  # steady state: the last 4
"""
ACTIVATION_PAGES = 16 * 96 * 112 * 112 * 4 // 4096  # one activation tensor, in 4 KiB pages


def probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "TUNE_MALLOC"))}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    tuned = probe()
    assert tuned["state"] == {"applied": True, "reason": ""}
    assert tuned["faults"] < ACTIVATION_PAGES // 10, tuned  # four passes reuse memory kept from the first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_turning_it_off_leaves_glibc_as_it_is():
    plain = probe(TUNE_MALLOC="0")
    assert plain["state"]["applied"] is False and "TUNE_MALLOC" in plain["state"]["reason"]
    assert plain["faults"] >= 4 * ACTIVATION_PAGES, plain  # mapped afresh each pass: every page faults again


@pytest.mark.parametrize("env, expected", [
    ({}, True), ({"TUNE_MALLOC": "0"}, False), ({"TUNE_MALLOC": "off"}, False), ({"TUNE_MALLOC": "1"}, True),
    ({"MALLOC_ARENA_MAX": "2"}, False), ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, False),
    ({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}, True),
])
def test_setting_respects_the_users_own_allocator_configuration(env, expected):
    assert load_settings(env).tune_malloc is expected
