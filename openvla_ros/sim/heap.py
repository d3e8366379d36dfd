"""Keep the simulator process's heap from growing with every episode (glibc malloc).

Why this exists: robosuite's hard reset, which OpenVLA's LIBERO evaluation uses on every
`env.reset()`, frees and rebuilds the whole MuJoCo model and data (~250 MB for a LIBERO scene,
half of it textures) and the offscreen render context. Nothing of it stays referenced, but in a
process with several threads (the bridge: the simulator thread, the executor threads, DDS) glibc
serves those allocations from per-thread arenas and keeps the freed blocks of each arena
resident. Measured in the bridge (realtime, 128 px, libero_object task 0): +128 MB RSS per
episode, never levelling off; with one arena the same run stays flat. A single-threaded loop of
resets does not grow, which is why this is an allocator effect and not a leaked object.

A soft reset (keeping the model) would avoid the rebuild, but it does not reproduce the hard
reset's trajectories after the first episode, so the evaluation keeps robosuite's reset and the
process keeps its heap in check instead:
- `cap_malloc_arenas()` once at process start, before threads exist: one malloc arena for the
  process (the bridge is not allocation-bound, so the lock is cheap);
- `release_free_heap()` after each rebuild: hand the freed model back to the kernel.

Both are no-ops (returning False) where the C library is not glibc. `export` uses
`release_free_heap()` too, between graphs, for the same allocator reason.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None  # musl and others: no arenas to cap, nothing to trim
    return libc


def cap_malloc_arenas(arenas: int = 1) -> bool:
    """Limit glibc to `arenas` malloc arenas; True if applied. Call before starting threads:
    arenas that already exist are kept."""
    if arenas < 1:
        raise ValueError(f"arenas must be >= 1, got {arenas}")
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_ARENA_MAX, arenas) == 1)


def release_free_heap() -> bool:
    """Return the heap's free pages to the kernel (malloc_trim(0)); True if anything was released."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0) == 1)
