"""The test session's machine: no calibrated performance profile, whoever ran the suite.

``broker.profile: auto`` (the default) plays this machine's calibrated profile when
``brokerlab calibrate`` has stored one. A developer or benchmark that calibrated on this machine
would otherwise change what every ``auto`` run in the suite predicts, so the session points
``$BROKERLAB_PROFILES`` at an empty folder of its own (subprocesses inherit it); tests about
calibration set their own store.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_STORE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _STORE
    _STORE = tempfile.mkdtemp(prefix="brokerlab-test-profiles-")
    os.environ["BROKERLAB_PROFILES"] = _STORE


def pytest_unconfigure(config: pytest.Config) -> None:
    if _STORE is not None:
        shutil.rmtree(_STORE, ignore_errors=True)
