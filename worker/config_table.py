"""The configuration table in the README, generated from :class:`~worker.config.WorkerConfig`.

``python -m worker.config_table`` prints it; ``--write README.md`` replaces the
table between the ``<!-- config-table -->`` markers; ``--check README.md``
exits 1 when the README is stale (a test runs the same check), so the
documented options can never drift from the ones the worker reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.config import _GROUPS, WorkerConfig, env_var

BEGIN = "<!-- config-table -->"
END = "<!-- /config-table -->"


def _default(value: object) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def markdown_table() -> str:
    rows = ["| option | environment | default | what |", "| --- | --- | --- | --- |"]
    fields = WorkerConfig.model_fields
    for group, title in _GROUPS.items():
        names = [n for n, f in fields.items() if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("group") == group]
        if not names:
            continue
        rows.append(f"| **{title}** | | | |")
        for name in names:
            info = fields[name]
            desc = (info.description or "").replace("|", "\\|")
            rows.append(f"| `--{name.replace('_', '-')}` | `{env_var(name)}` | {_default(info.default)} | {desc} |")
    return "\n".join(rows) + "\n"


def replace_table(text: str) -> str:
    try:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"markers {BEGIN} ... {END} not found") from None
    return f"{head}{BEGIN}\n{markdown_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.config_table", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", type=Path, metavar="README", help="Replace the table between the markers in this file.")
    mode.add_argument("--check", type=Path, metavar="README", help="Exit 1 if the table in this file is not the generated one.")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(replace_table(args.write.read_text()))
        return 0
    if args.check:
        text = args.check.read_text()
        if replace_table(text) != text:
            print(f"{args.check}: configuration table is stale; run: python -m worker.config_table --write {args.check}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
