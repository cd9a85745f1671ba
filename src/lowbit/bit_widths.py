"""The bit widths lowbit takes, and their check: no torch here, so that the command line checks
``quant.wbits=40`` before it imports the training code (``lowbit.validation.check_values``).

With k bits a quantizer has 2^k - 1 steps (``lowbit.quant.functional.levels``); 32 means "leave
the tensor in float" (``FULL_PRECISION``), so a quantizer can be switched off per layer.
"""

from __future__ import annotations

from typing import Any

from lowbit.errors import ConfigError

FULL_PRECISION = 32
SUPPORTED_BITS = frozenset(range(1, 17)) | {FULL_PRECISION}
# An image quantized for an integer runtime is a uint8 tensor: 2-8 bits, or 32 to keep it float.
INPUT_BITS = frozenset(range(2, 9)) | {FULL_PRECISION}


def check_bits(name: str, value: Any) -> int:
    """``value`` as an int bit width, or ConfigError naming ``name`` and what is allowed."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{name} must be an integer bit width (1-16, or 32 for full precision), "
            f"got {value!r} ({type(value).__name__})"
        )
    if value not in SUPPORTED_BITS:
        raise ConfigError(f"{name}={value} is not supported: use 1-16, or 32 for full precision")
    return value
