"""Wall time, CPU time and peak resident memory of one timed phase of a process.

CPU time (user + system, of every thread of the process and of any child it waited for) is
kept beside wall time because the machine is shared: other work stretches wall time, while
the CPU a contender spends is its own cost. Ratios of both are reported.

Peak RSS is read from the kernel's high-water mark (``VmHWM``), which is reset to the
current RSS when the phase starts (``/proc/self/clear_refs``), so it covers the phase alone;
where that is not possible (not Linux) the process's lifetime peak (``ru_maxrss``) is used
and the result says so.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """The current resident set size."""
    found = _status_bytes("VmRSS")
    if found is not None:
        return found
    import psutil

    return int(psutil.Process().memory_info().rss)


def lifetime_peak_bytes() -> int:
    """The peak RSS over the life of the process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cpu_seconds() -> float:
    """User + system CPU time of this process's threads and its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def reset_peak() -> bool:
    """Reset the kernel's peak RSS to the current RSS; False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_bytes() -> int:
    """The peak RSS since the last reset (or over the process's life)."""
    found = _status_bytes("VmHWM")
    return found if found is not None else lifetime_peak_bytes()


@dataclass
class Window:
    """A timed phase: ``with window: ...`` records seconds, RSS at the start and peak RSS."""

    seconds: float = 0.0
    cpu: float = 0.0
    rss_start: int = 0
    peak: int = 0
    peak_scope: str = "phase"
    _started: float = field(default=0.0, repr=False)
    _cpu_started: float = field(default=0.0, repr=False)

    def __enter__(self) -> Window:
        self.peak_scope = "phase" if reset_peak() else "process"
        self.rss_start = rss_bytes()
        self._cpu_started = cpu_seconds()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.seconds = time.perf_counter() - self._started
        self.cpu = cpu_seconds() - self._cpu_started
        self.peak = max(peak_bytes(), self.rss_start)

    def as_dict(self) -> dict[str, float | int | str]:
        """The measurement, in the units of the result file."""
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu,
            "rss_start_mb": self.rss_start / 2**20,
            "peak_rss_mb": self.peak / 2**20,
            "rss_growth_mb": (self.peak - self.rss_start) / 2**20,
            "peak_scope": self.peak_scope,
        }
