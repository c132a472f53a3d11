"""xception_core.allocator: large blocks kept in the heap once freed (glibc), applied by the API."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from xception_core import allocator

#: A child process fills a 256 MiB array, frees it, fills another one, and prints its resident
#: memory (MiB) after each step; with ``keep`` it applies keep_freed_memory() first.
_CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from xception_core.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory() is None
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    start = rss()
    a = np.ones(1 << 25)
    filled = rss()
    del a
    freed = rss()
    b = np.ones(1 << 25)
    print(start, filled, freed, rss())
    """
)


def _resident_mib(mode: str, env: dict[str, str] | None = None) -> list[int]:
    environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | (env or {})
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=120, check=True, env=environment)
    return [int(v) for v in out.stdout.split()[-4:]]


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's allocator only (this C library is not glibc)")
def test_freed_memory_is_kept_and_reused():
    """glibc's default unmaps a freed 256 MiB block (the next one is mapped and faulted afresh);
    kept, the block stays resident and the next one reuses it."""
    start, filled, freed, again = _resident_mib("default")
    assert filled - start >= 250 and filled - freed >= 250  # given back
    start, filled, freed, again = _resident_mib("keep")
    assert filled - start >= 250 and filled - freed < 10  # kept
    assert again - freed < 10  # and reused, not a second block


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's allocator only (this C library is not glibc)")
def test_the_tunables_string_keeps_freed_memory_from_the_start():
    """GLIBC_TUNABLES (what a Ray Serve replica starts with) does what keep_freed_memory() does."""
    start, filled, freed, again = _resident_mib("default", {"GLIBC_TUNABLES": allocator.GLIBC_TUNABLES})
    assert filled - start >= 250 and filled - freed < 10 and again - freed < 10


def test_not_glibc_is_said_and_nothing_is_called(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator._glibc() is None
    assert "not glibc" in allocator.keep_freed_memory()


def test_a_refused_parameter_is_named(monkeypatch):
    class Libc:
        class mallopt:  # noqa: N801 -- a stand-in for the C function
            argtypes = None

            def __new__(cls, parameter, value):
                return 0 if parameter == -8 else 1

    monkeypatch.setattr(allocator, "_glibc", lambda: Libc)
    assert allocator.keep_freed_memory() == "glibc refused mallopt M_ARENA_MAX"
