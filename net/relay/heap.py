"""Handing freed heap memory back to the operating system.

A relay reads messages up to `protocol.MAX_MESSAGE_BYTES` and hashes passwords with scrypt
(16 MiB each, on worker threads). glibc's allocator keeps what such peaks freed (above the
top of the heap, and in per-thread arenas) unless asked to return it, so without a trim the
resident size of a relay that once met a burst of large messages stays at that burst's height.
`trim()` asks (`malloc_trim(0)`); the relay's housekeeping calls it every half minute. It does
nothing where the C library has no `malloc_trim` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the C library this process already has loaded
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim() -> bool:
    """Return freed heap pages to the operating system; whether any were (False where unsupported)."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
