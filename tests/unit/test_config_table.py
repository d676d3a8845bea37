"""The README's configuration table is the one generated from WorkerConfig (regenerate: python -m worker.config_table --write README.md)."""

from __future__ import annotations

from pathlib import Path

from worker.config import WorkerConfig, env_var
from worker.config_table import main, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_table_lists_every_option_with_its_variable() -> None:
    table = markdown_table()
    for name in WorkerConfig.model_fields:
        assert f"`--{name.replace('_', '-')}` | `{env_var(name)}`" in table, name


def test_readme_table_is_not_stale() -> None:
    assert main(["--check", str(README)]) == 0, "README configuration table is stale: python -m worker.config_table --write README.md"
