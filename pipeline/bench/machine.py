"""The machine the figures were measured on, and how much other processes disturbed them.

Public: :class:`OthersCpu`, :func:`machine`.
"""

from __future__ import annotations

import os
import platform


class OthersCpu:
    """Share of the machine's CPU time used by *other* processes between two points (Linux /proc/stat minus
    this process and its waited-for children): how much a shared machine disturbed the figures."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        import resource

        try:
            with open("/proc/stat", encoding="ascii") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy, total = sum(fields[:3]) + sum(fields[5:8]), sum(fields[:8])  # user nice system, irq softirq steal
        mine = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
        return busy / tick, total / tick, mine

    def percent(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[1] <= self.start[1]:
            return None
        busy, total, mine = (b - a for a, b in zip(self.start, end, strict=True))
        return round(100 * max(0.0, busy - mine) / total, 1)


def machine() -> dict:
    """CPU model, cores, bf16 support, GPU, memory, Python/torch versions and git commit of this run."""
    import torch

    from pipeline.he.scoring import _cpu_has_bf16
    from pipeline.he.tile_readers import available_cpus
    from pipeline.outputs.provenance import git_commit

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": available_cpus(), "cpu_bf16": _cpu_has_bf16(), "gpu": gpu,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "git_commit": git_commit()}
