"""A published detector's importer is one more file: modules that define ``IMPORTER`` are found, helpers are not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import export.importers as importers


def test_a_module_that_defines_an_importer_is_found_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zz_example.py").write_text(
        "from export.importers import Importer\n"
        "class Example(Importer):\n"
        "    name = 'zz-example'\n"
        "    summary = 'an example'\n"
        "    description = 'an example'\n"
        "    def add_arguments(self, parser): pass\n"
        "    def run(self, args): return 0\n"
        "IMPORTER = Example()\n"
    )
    (tmp_path / "zz_helper.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(importers, "__path__", [*importers.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "export.importers.zz_example", raising=False)
    mods = importers.importer_modules()
    assert "zz_example" in mods and "zz_helper" not in mods and "common" not in mods
    assert {"ufd", "c2p_clip"} <= set(mods)
    assert importers.get("zz-example").summary == "an example"
    sys.modules.pop("export.importers.zz_example", None)
    sys.modules.pop("export.importers.zz_helper", None)
