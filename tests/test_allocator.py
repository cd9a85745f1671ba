"""lowbit.allocator: freed CPU buffers are reused instead of mapped and faulted in again.

What the setting changes is counted, not timed: the page faults of allocating and filling the
same buffers again after they were freed, in a fresh process each (the setting is process-wide).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lowbit import allocator

REFILLS = """
import resource
import torch
from lowbit.allocator import keep_freed_memory
print(keep_freed_memory())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # four 64 MiB buffers alive at once, then freed, as a step's activations are
    buffers = [torch.ones(1 << 24) for _ in range(4)]
    del buffers
for _ in range(6):  # the heap grows to the steps' size in the first few (at most 4 seen)
    step()
start = faults()
for _ in range(3):
    step()
print(faults() - start)
"""


def refill_faults(**environment: str) -> tuple[bool, int]:
    """(keep_freed_memory's answer, the page faults of the last three of nine steps)."""
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_TUNING}
    env.pop("GLIBC_TUNABLES", None)
    env.update(environment)
    lines = subprocess.run(
        [sys.executable, "-c", REFILLS], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return lines[0] == "True", int(lines[1])


needs_glibc = pytest.mark.skipif(allocator.glibc() is None, reason="glibc's mallopt only")


@needs_glibc
def test_freed_buffers_are_reused_without_new_page_faults():
    kept, kept_faults = refill_faults()
    plain_kept, plain_faults = refill_faults(**{allocator.SWITCH: "0"})
    assert kept and not plain_kept
    # unmapped on free, each 64 MiB buffer faults in again: 16384 pages of 4 KiB (32 where the
    # kernel backs the mapping with 2 MiB pages), 12 buffers; reused, almost none
    assert plain_faults >= 12 * 32
    assert kept_faults * 10 < plain_faults


@pytest.mark.parametrize(
    "name, value",
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072"),
    ],
)
def test_the_users_own_allocator_tuning_stands(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(allocator, "glibc", lambda: calls.append(True))
    allocator.keep_freed_memory.cache_clear()
    try:
        assert allocator.keep_freed_memory() is False
        assert calls == []  # refused before glibc is asked anything
    finally:
        allocator.keep_freed_memory.cache_clear()


def test_switched_off_or_other_c_library_does_nothing(monkeypatch):
    allocator.keep_freed_memory.cache_clear()
    try:
        monkeypatch.setenv(allocator.SWITCH, "off")
        assert allocator.keep_freed_memory() is False
        allocator.keep_freed_memory.cache_clear()
        monkeypatch.delenv(allocator.SWITCH)
        monkeypatch.setattr(allocator, "glibc", lambda: None)
        assert allocator.keep_freed_memory() is False
    finally:
        allocator.keep_freed_memory.cache_clear()
