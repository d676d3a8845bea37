"""Test layout and fixtures.

``tests/unit`` (pure logic and single components; ``make test-fast``),
``tests/contracts`` (schemas and deploy manifests against the code),
``tests/integration`` (worker processes against the real broker and Redis),
``tests/export`` (the PyTorch side). Markers are set from the directory, so
``pytest -m unit`` and friends select a layer. Fixtures (real servers, a tiny
bundle) come from :mod:`devkit.fixtures`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["devkit.fixtures"]

_LAYERS = ("unit", "contracts", "integration", "export")
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            layer = Path(item.path).resolve().relative_to(_HERE).parts[0]
        except ValueError:
            continue
        if layer in _LAYERS:
            item.add_marker(getattr(pytest.mark, layer))
