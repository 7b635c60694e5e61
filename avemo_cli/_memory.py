"""Give freed heap memory back to the operating system between the passes of a long input.

The model stage and openSMILE allocate and free tens of MiB per span or pass; glibc keeps such
freed memory in its heap, fragmented, so a process's resident size crept up with the length of
the input (a 20-minute video peaked ~90 MiB above a 1-minute one). ``malloc_trim`` after each
span or pass keeps the peak that of one span or pass; it costs well under a millisecond here.
Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Return the heap's free memory to the system (glibc), else nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
