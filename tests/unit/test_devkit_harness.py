"""The shared harness (devkit.harness): what it passes to a worker process, and that it never leaves one running.

Tests, benchmarks and the demo all start workers through it, so a setting that
leaks in from the developer's shell, or a worker that ignores SIGTERM and
outlives its test, would change every one of them at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from devkit.harness import Topics, settings_env, start_module, stop, worker_env

SERVERS = SimpleNamespace(bootstrap_servers="127.0.0.1:1", redis_url="redis://127.0.0.1:2/0")
TOPICS = Topics("up", "ver", "dead", "grp")


def test_worker_env_drops_the_callers_worker_settings_and_fault_switches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIGIS_MAX_BATCH", "999")
    monkeypatch.setenv("AIGIS_LOG_LEVEL", "error")
    monkeypatch.setenv("AIGIS_TEST_CRASH_KEY", "x")
    monkeypatch.setenv("AIGIS_BENCH_CACHE", "/somewhere")  # not a worker setting: passes through
    env = worker_env(SERVERS, TOPICS, tmp_path, AIGIS_MAX_WAIT_MS="5")
    assert "AIGIS_MAX_BATCH" not in env and "AIGIS_TEST_CRASH_KEY" not in env
    assert env["AIGIS_LOG_LEVEL"] == "info" and env["AIGIS_MAX_WAIT_MS"] == "5" and env["AIGIS_BENCH_CACHE"] == "/somewhere"
    assert env["AIGIS_INPUT_TOPIC"] == "up" and env["AIGIS_GROUP_ID"] == "grp" and env["AIGIS_BUNDLE"] == str(tmp_path)


def test_worker_env_can_pass_the_callers_settings_on_but_never_its_wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The demo's mode: the user's AIGIS_MAX_BATCH / log level reach the worker; servers, topics and bundle stay the demo's."""
    monkeypatch.setenv("AIGIS_MAX_BATCH", "8")
    monkeypatch.setenv("AIGIS_LOG_LEVEL", "warning")
    monkeypatch.setenv("AIGIS_INPUT_TOPIC", "someone-elses-topic")
    env = worker_env(SERVERS, TOPICS, tmp_path, inherit_settings=True)
    assert env["AIGIS_MAX_BATCH"] == "8" and env["AIGIS_LOG_LEVEL"] == "warning"
    assert env["AIGIS_INPUT_TOPIC"] == "up" and env["AIGIS_BOOTSTRAP_SERVERS"] == "127.0.0.1:1"


def test_settings_env_maps_config_fields_and_reports_what_the_worker_does_not_read() -> None:
    env, unknown = settings_env({"max_batch": 16, "AIGIS_MAX_WAIT_MS": "5", "no_such_setting": 1})
    assert env == {"AIGIS_MAX_BATCH": "16", "AIGIS_MAX_WAIT_MS": "5"}
    assert unknown == ["AIGIS_NO_SUCH_SETTING"]


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n")
    log = tmp_path / "stubborn.log"
    proc = subprocess.Popen([sys.executable, str(script)], stdout=log.open("ab"), start_new_session=True)
    deadline = time.monotonic() + 20
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    assert stop(proc, signal.SIGTERM, timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 10 and proc.poll() is not None


def test_start_module_runs_from_the_repository_root_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Development packages (devkit, bench) are not in the wheel: they resolve because processes start in the checkout."""
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "sub" / "probe.log"
    proc = start_module("devkit.faults", ["--help"], log)
    assert proc.wait(60) == 0
    assert "usage" in log.read_text().lower()
