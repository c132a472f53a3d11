"""The C allocator kept from mapping large tensors afresh on every pass (glibc only).

glibc's malloc gives every block over 32 MiB a fresh ``mmap`` and unmaps it when it is freed.
Attributions allocate and free such blocks by the hundred (a 299 px batch of 8 holds one per
layer for the backward pass), so each pass faults and zeroes gigabytes of new pages again: four
Integrated Gradients runs (32 points at 299 px) took 7.3 million page faults and 26 s of system
time. Served from the heap and kept there once freed, the same runs took 0.55 million and 2.5 s.
The price: the process keeps the memory of its largest computation instead of returning it.

``keep_freed_memory()`` sets this with ``mallopt`` at run time. It must come before other
threads allocate: a thread that already has an arena of its own keeps it. It is the process
owner's decision -- the API applies it in ``create_app``, before any model exists, as its
settings say -- never an import's. :data:`GLIBC_TUNABLES` is the same for a process started
with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["GLIBC_TUNABLES", "MALLOPT_SETTINGS", "keep_freed_memory"]

#: What is set: no ``mmap`` for any block, never trim the heap's top, one arena (threads share the
#: kept memory). Each row: the ``mallopt`` parameter (glibc's ``malloc.h``), its number and value,
#: then the same as a tunable of ``GLIBC_TUNABLES`` and its value ("never trim" is ``-1`` for
#: ``mallopt``, a threshold of 1 TiB as a tunable, which takes no negative number).
MALLOPT_SETTINGS: tuple[tuple[str, int, int, str, int], ...] = (
    ("M_MMAP_MAX", -4, 0, "glibc.malloc.mmap_max", 0),
    ("M_TRIM_THRESHOLD", -1, -1, "glibc.malloc.trim_threshold", 1 << 40),
    ("M_ARENA_MAX", -8, 1, "glibc.malloc.arena_max", 1),
)

#: The same settings as the ``GLIBC_TUNABLES`` environment variable of a process started with
#: them (a Ray Serve replica's worker, whose threads have their arenas before the app is built).
GLIBC_TUNABLES = ":".join(f"{tunable}={value}" for *_, tunable, value in MALLOPT_SETTINGS)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # not glibc (musl has neither the version call nor these parameters)
        return None
    return libc


def keep_freed_memory() -> str | None:
    """Apply :data:`MALLOPT_SETTINGS` to this process; ``None`` when done, else why not (one line)."""
    libc = _glibc()
    if libc is None:
        return "the C library is not glibc: its allocator is left as it is"
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    refused = [name for name, parameter, value, *_ in MALLOPT_SETTINGS if libc.mallopt(parameter, value) != 1]
    return f"glibc refused mallopt {', '.join(refused)}" if refused else None
