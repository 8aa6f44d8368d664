"""The README's variable table is the backend's `variables`, word for word."""

from __future__ import annotations

from pathlib import Path

from abe_mq_sqs import SqsBackend

README = Path(__file__).resolve().parents[1] / "README.md"


def table_rows() -> list[str]:
    return [
        f"| `{v.name}` | {f'`{v.default}`' if v.default else ''} | {v.meaning} |"
        for v in SqsBackend.variables
    ]


def test_readme_lists_every_variable_as_declared() -> None:
    text = README.read_text()
    header = "| Variable | Default | Meaning |\n|---|---|---|\n"
    assert header + "\n".join(table_rows()) + "\n" in text
