"""Timing tools: repeated measurements with warm-up, CPU contention, machine facts, compute limit.

Every duration is wall-clock seconds from ``time.perf_counter``. Ours and the baseline are timed in
alternating order (ours, baseline, baseline, ours, …) so a load change on a shared machine hits both.
"""
from __future__ import annotations

import datetime
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (from /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def process_cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) used by one process; 0 if it is gone."""
    try:
        with open(f"/proc/{pid or 'self'}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuWatch:
    """How much CPU other processes took while a block ran, in cores (0 = the machine was ours).

    ``pids`` are extra processes counted as ours (e.g. the app server under test).
    """

    def __init__(self, pids: tuple[int, ...] = ()):
        self.pids = pids
        self.other_cores: float | None = None
        self.own_cores: float | None = None

    def _own(self) -> float:
        return process_cpu_seconds() + sum(process_cpu_seconds(p) for p in self.pids)

    def __enter__(self) -> "CpuWatch":
        self._t, self._busy, self._mine = time.perf_counter(), _cpu_busy_seconds(), self._own()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = max(time.perf_counter() - self._t, 1e-9)
        busy, mine = _cpu_busy_seconds() - self._busy, self._own() - self._mine
        self.own_cores = round(mine / elapsed, 2)
        self.other_cores = round(max(0.0, busy - mine) / elapsed, 2)


@dataclass
class Timing:
    """Seconds per repetition (warm-up excluded), and the CPU other processes took meanwhile."""

    seconds: list[float] = field(default_factory=list)
    other_cores: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_dict(self) -> dict:
        return {"median_s": round(self.median, 4), "runs_s": [round(s, 4) for s in self.seconds],
                "other_processes_cores": self.other_cores}


def _once(fn: Callable[[object], object], setup: Callable[[], object] | None) -> float:
    arg = setup() if setup else None
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def repeat(fn: Callable[[object], object], reps: int, warmup: int = 1,
           setup: Callable[[], object] | None = None, pids: tuple[int, ...] = ()) -> Timing:
    """Time ``fn(setup())`` ``reps`` times after ``warmup`` untimed calls; ``setup`` is never timed."""
    for _ in range(warmup):
        _once(fn, setup)
    timing = Timing()
    with CpuWatch(pids) as watch:
        for _ in range(reps):
            timing.seconds.append(_once(fn, setup))
    timing.other_cores = watch.other_cores
    return timing


def side_by_side(ours: Callable, baseline: Callable, reps: int, baseline_reps: int | None = None, warmup: int = 1,
                 setup_ours: Callable | None = None, setup_baseline: Callable | None = None) -> tuple[Timing, Timing]:
    """Time ours and the baseline interleaved (ABBA order), each after its own warm-up."""
    baseline_reps = reps if baseline_reps is None else baseline_reps
    for _ in range(warmup):
        _once(ours, setup_ours)
        _once(baseline, setup_baseline)
    a, b = Timing(), Timing()
    with CpuWatch() as watch:
        for i in range(max(reps, baseline_reps)):
            order = [(ours, setup_ours, a, reps), (baseline, setup_baseline, b, baseline_reps)]
            for fn, setup, timing, limit in (order if i % 2 == 0 else order[::-1]):
                if len(timing.seconds) < limit:
                    timing.seconds.append(_once(fn, setup))
    a.other_cores = b.other_cores = watch.other_cores
    return a, b


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        return None
    return None


def machine_info() -> dict:
    """What the figures were measured on: CPU, cores, torch threads, memory, library versions, date, load."""
    import PIL
    import torch
    import transformers
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "memory_gb": memory_gb(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "pillow": PIL.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def matmul_flops(n: int = 2048, reps: int = 5) -> Timing:
    """Seconds per dense float32 ``n``×``n`` matmul at the current torch thread count (2·n³ FLOPs each)."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    return repeat(lambda _: torch.matmul(a, b), reps=reps, warmup=2)


def forward_flops(module, resolution: int) -> int:
    """FLOPs of one forward pass of ``module(pixel_values=…)`` on one image of ``resolution`` pixels."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(1, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(pixel_values=x)
    return int(counter.get_total_flops())


def interleaved(fns: dict[str, Callable[[], object]], reps: int,
                warmups: dict[str, Callable[[], object]] | None = None) -> dict[str, Timing]:
    """Time several variants round-robin (order rotated each round) so load changes hit all alike.

    ``warmups`` are untimed calls made once per variant first (e.g. the same work on a few images).
    """
    for fn in (fns if warmups is None else warmups).values():
        fn()
    names = list(fns)
    timings = {name: Timing() for name in names}
    with CpuWatch() as watch:
        for i in range(reps):
            for name in names[i % len(names):] + names[:i % len(names)]:
                start = time.perf_counter()
                fns[name]()
                timings[name].seconds.append(time.perf_counter() - start)
    for t in timings.values():
        t.other_cores = watch.other_cores
    return timings


class BusyCore:
    """Another process spinning on one core while the block runs, as a shared or busy host would have.

    Started and stopped by this object only (its own child, by pid)."""

    def __enter__(self) -> "BusyCore":
        import subprocess
        import sys
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.2)  # let it get scheduled before the timing starts
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()
