"""The README's variable table is the Variable declarations, row for row."""

from __future__ import annotations

from pathlib import Path

from abe_mq_redis import RedisBackend

README = Path(__file__).resolve().parents[1] / "README.md"


def _row(name: str, default: str | None, meaning: str) -> str:
    shown = f" `{default}` " if default else " "
    return f"| `{name}` |{shown}| {meaning} |"


def test_variable_table_matches_the_declarations() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("| Variable | Default | Meaning |")
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append(line)
    expected = [_row(v.name, v.default, v.meaning) for v in RedisBackend.variables]
    assert table == expected
