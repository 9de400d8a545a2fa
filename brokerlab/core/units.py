"""Parse quantities the way users write them in scenario files: ``5ms``, ``2kB``, ``800/s``.

Internally the lab works in seconds, bytes and events per second; these parsers are the only
place that knows about suffixes, so every error message about a unit comes from here.
"""

from __future__ import annotations

import re

_NUMBER = r"(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
RATE_UNITS: dict[str, float] = {"/s": 1.0, "/ms": 1e3, "/min": 1 / 60, "/h": 1 / 3600}

_DURATION_RE = re.compile(rf"^\s*{_NUMBER}\s*([a-zµ]+)\s*$")
_SIZE_RE = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-z]+)\s*$")
_RATE_RE = re.compile(rf"^\s*{_NUMBER}\s*(/\s*[a-z]+)\s*$")


def _reject_bool(value: object, what: str) -> None:
    # YAML turns `yes`/`no` into booleans, and bool is an int in Python: refuse it explicitly.
    if isinstance(value, bool):
        raise ValueError(f"expected {what}, got a boolean")


def parse_duration(value: object) -> float:
    """Return seconds for ``"5ms"``, ``"2s"``, ``"1.5min"``; a bare number means seconds."""
    _reject_bool(value, "a duration such as '5ms'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match or match.group(2) not in DURATION_UNITS:
            units = ", ".join(sorted(DURATION_UNITS))
            raise ValueError(f"{value!r} is not a duration; write a number and a unit ({units})")
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as '5ms', got {type(value).__name__}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative ({value!r})")
    return seconds


def parse_size(value: object) -> int:
    """Return bytes for ``"2kB"`` (1000), ``"4KiB"`` (1024), ``"1MB"``; a bare number is bytes."""
    _reject_bool(value, "a size such as '2kB'")
    if isinstance(value, int | float):
        size = float(value)
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match or match.group(2) not in SIZE_UNITS:
            units = ", ".join(SIZE_UNITS)
            raise ValueError(f"{value!r} is not a size; write a number and a unit ({units})")
        size = float(match.group(1)) * SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a size such as '2kB', got {type(value).__name__}")
    if size < 0:
        raise ValueError(f"a size cannot be negative ({value!r})")
    return round(size)


def parse_rate(value: object) -> float:
    """Return events per second for ``"800/s"``, ``"3/ms"``, ``"60/min"``; a bare number is /s."""
    _reject_bool(value, "a rate such as '800/s'")
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str):
        match = _RATE_RE.match(value)
        unit = match.group(2).replace(" ", "") if match else ""
        if not match or unit not in RATE_UNITS:
            units = ", ".join(RATE_UNITS)
            raise ValueError(f"{value!r} is not a rate; write a number and a unit ({units})")
        rate = float(match.group(1)) * RATE_UNITS[unit]
    else:
        raise ValueError(f"expected a rate such as '800/s', got {type(value).__name__}")
    if rate < 0:
        raise ValueError(f"a rate cannot be negative ({value!r})")
    return rate


def format_duration(seconds: float) -> str:
    """Render seconds back in the unit a person would pick, for summaries and error messages."""
    if seconds == 0:
        return "0s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:g}us"
    if seconds < 1:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds:g}s"
