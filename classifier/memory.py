"""How this process's C allocator treats the large, short-lived buffers of a CNN forward pass.

glibc hands every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB) straight to
the kernel and unmaps it on free, so each forward pass of a 16-image batch maps, page-faults and zeroes
its activations afresh: measured here, about 60% of a cold 128-image batch went to the kernel doing
that (``python -m bench --levers``, allocator rows). :func:`keep_freed_memory` tells glibc to serve large
blocks from the heap and keep freed memory for reuse, in one arena for every thread (the app runs
predictions in worker threads). The cost is that the process keeps its peak memory instead of
returning it to the system between batches.

Only glibc (Linux) has these knobs; elsewhere, or when the allocator is already configured through
its own environment variables, nothing is changed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

from settings import get_settings

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers (glibc <malloc.h>).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP = ((M_MMAP_MAX, 0),                 # large blocks come from the heap, not from fresh mmaps
        (M_TRIM_THRESHOLD, 1 << 30),     # freed memory stays with the process (up to 1 GiB at the top)
        (M_ARENA_MAX, 1))                # worker threads share the main heap instead of 64 MiB arenas

_lock = threading.Lock()
_state: dict = {}


def keep_freed_memory() -> dict:
    """Apply the settings above once per process. Returns what happened, e.g. ``{"applied": True}`` or
    ``{"applied": False, "reason": "..."}``; safe to call any number of times, from any thread."""
    with _lock:
        if not _state:
            _state.update(_apply())
            log.debug("allocator: %s", _state)
        return dict(_state)


def _apply() -> dict:
    settings = get_settings()
    if not settings.tune_malloc:
        return {"applied": False, "reason": "TUNE_MALLOC=0 or glibc's own MALLOC_* / GLIBC_TUNABLES set"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it  # noqa: B018
    except (OSError, AttributeError):
        return {"applied": False, "reason": "not glibc"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    failed = [param for param, value in KEEP if mallopt(param, value) != 1]
    return {"applied": not failed, "reason": f"mallopt refused {failed}" if failed else ""}
