"""bench.machine.settle_cpu: waits for a quiet machine, and never longer than asked."""

from __future__ import annotations

import sys

import pytest

from bench.machine import settle_cpu

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")


def test_returns_after_the_quiet_windows_when_any_load_counts_as_quiet() -> None:
    waited = settle_cpu(busy_below=1.01, quiet_windows=3, window_s=0.05, max_s=10.0)
    assert 0.15 <= waited < 2.0  # three windows, not the cap


def test_gives_up_at_max_s_when_the_machine_never_counts_as_quiet() -> None:
    waited = settle_cpu(busy_below=0.0, quiet_windows=1, window_s=0.05, max_s=0.3)
    assert 0.3 <= waited < 1.5
