"""The CPU allocator setting lowbit runs under: glibc keeps the memory a step frees for the next.

torch takes every CPU tensor's buffer from ``malloc``. glibc serves a request above its mmap
threshold (128 KiB, raised on its own up to 32 MiB) with a fresh ``mmap`` and unmaps it again on
``free``. A training step frees its activations and gradients and the next step asks for the
same sizes, so every step maps them anew, and the kernel faults in and zero-fills every page a
second time, which showed as system time in the eager NIN train-step bench (docs/performance.md,
"Measurements behind code choices"). Fake quantization allocates more such buffers per
step than the float model (each quantizer's output, the quantized weights, Eq. 12's gradient),
so it pays more: the step ratios of issue 15 move with this setting.

``keep_freed_memory`` asks glibc, through ``mallopt``, to serve requests up to 1 GiB from its
heap (``M_MMAP_THRESHOLD``), to keep up to 1 GiB of freed memory at the heap's top instead of
returning it (``M_TRIM_THRESHOLD``), and to grow the heap 256 MiB ahead (``M_TOP_PAD``). Freed
buffers are then reused as they are, as the CUDA caching allocator reuses GPU memory. The cost:
the process's resident memory stays near its peak. Values are unchanged; only where the bytes
live changes.

Training (``lowbit.train.run``), ``scripts/bench.py`` and ``scripts/profile_step.py`` call it
before any work; the FP32 baseline of every ratio runs under the same setting. It does nothing
on a C library other than glibc (macOS, musl), when ``LOWBIT_KEEP_FREED_MEMORY=0``, or when the
user tunes glibc's allocator already (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``), whose choice
stands.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache

log = logging.getLogger(__name__)

SWITCH = "LOWBIT_KEEP_FREED_MEMORY"
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {
    M_MMAP_THRESHOLD: 1 << 30,  # buffers up to 1 GiB come from the heap, reused after free
    M_TRIM_THRESHOLD: 1 << 30,  # up to 1 GiB freed at the heap's top stays mapped
    M_TOP_PAD: 1 << 28,  # each heap extension 256 MiB ahead: fewer brk calls
}
# the user's own glibc allocator settings, which lowbit leaves as they are
USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def user_tuned() -> bool:
    return any(name in os.environ for name in USER_TUNING) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )


def glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it alone has ``gnu_get_libc_version``)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


@cache
def keep_freed_memory() -> bool:
    """Applies the settings above once per process; True if they are in force."""
    if not enabled() or user_tuned():
        return False
    libc = glibc()
    if libc is None:
        return False
    accepted = all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
    if not accepted:
        log.warning("glibc refused lowbit's allocator settings; freed memory is unmapped")
    return accepted
