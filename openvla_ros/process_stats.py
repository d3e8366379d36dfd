"""Memory, file descriptors and threads of a running process, read from /proc/<pid> (Linux).

Used by the soak and the evaluation to follow the node processes they started, without
instrumenting the nodes themselves."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

_KIB_PER_MB = 1024.0


@dataclass(frozen=True)
class ProcessStats:
    rss_mb: float  # resident set size now (VmRSS)
    peak_rss_mb: float  # the most it has been resident so far (VmHWM)
    fds: int  # open file descriptors
    threads: int

    def to_json(self) -> dict:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}


def read_process_stats(pid: int) -> ProcessStats | None:
    """Stats of process `pid`, or None once it has exited (or /proc is not there)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return ProcessStats(rss_mb=_kib(fields["VmRSS"]) / _KIB_PER_MB, peak_rss_mb=_kib(fields["VmHWM"]) / _KIB_PER_MB,
                        fds=fds, threads=int(fields["Threads"]))


def _kib(value: str) -> int:
    number, unit = value.split()
    if unit != "kB":
        raise ValueError(f"/proc status value {value!r}: expected a size in kB")
    return int(number)


def growth_after(values: list[float], warmup: int, tail: int = 3) -> float | None:
    """Relative growth of `values` after the first `warmup` ones: (mean of the last `tail` values
    - the value at warm-up end) / the value at warm-up end; None when nothing follows the warm-up.

    The mean of the last few, not the largest: the simulator's RSS moves up and down by a few
    percent from episode to episode (where the allocator puts each rebuilt model), while a leak
    shows as a trend that the end of a long run carries."""
    if warmup < 1 or tail < 1:
        raise ValueError(f"warmup and tail must be >= 1 sample, got {warmup} and {tail}")
    if len(values) <= warmup:
        return None
    base = values[warmup - 1]
    last = values[warmup:][-tail:]
    return (sum(last) / len(last) - base) / base
