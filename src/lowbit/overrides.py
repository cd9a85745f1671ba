"""Command-line overrides as Hydra reads them, and Hydra's errors as one line.

The CLI's checks (``lowbit.cli``) and ``resume=RUN_DIR`` (``lowbit.resume``) both ask which key
an override sets; Hydra's own override parser answers, so that ``+key=``, ``++key=``, ``~key``
and ``group@package=`` mean here what they mean to Hydra.
"""

from __future__ import annotations

from lowbit.errors import ConfigError, one_line


def override_key(override: str) -> str:
    """The key or group an override sets, as Hydra's override parser reads it (no ``+``/``~``,
    no ``@package``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).key_or_group
    except Exception as error:
        raise ConfigError(hydra_error_line(error)) from None


def hydra_error_line(error: BaseException) -> str:
    """A Hydra composition or override error as one line: its first two lines without the hint
    about HYDRA_FULL_ERROR, and an unknown key said in the user's words."""
    text = str(error)
    if text.startswith("Could not override '"):  # Hydra's hint to use + is rarely what is meant
        key = text.split("'")[1]
        return (
            f"unknown setting {key!r}: it is not in the composed config; check the spelling "
            f"and the chosen groups (e.g. quant.alpha_init needs quantizer=pact), or "
            f"prefix + to add a new key"
        )
    lines = [line for line in text.splitlines() if "HYDRA_FULL_ERROR" not in line]
    return one_line("\n".join(lines), max_lines=2) or type(error).__name__
