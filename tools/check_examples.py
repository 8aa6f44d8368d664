"""Type-check every Python example in README.md and docs/ with `mypy --strict`.

Each page's ```python blocks become modules in a folder of their own: a block whose
fence names a file (```python title="shop.py") is that file, so later blocks on the page
can import it (blocks naming the same file continue it); any other block is a module by
itself. A snippet (statements that import nothing, or await at their top level, such as
`await backend.publish(...)`) is checked as the body of
`async def snippet(backend: Backend) -> None`, after the names in
tools/examples_prelude.py (`bill`, `InvalidOrder`, ...), which the pages use as
placeholders for application code. A block that is deliberately not code is fenced with
another language (```text). Exit status: 1 when any page fails.

    python tools/check_examples.py            # from the repository root
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python(?P<options>[^\n]*)\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)
PRELUDE = Path(__file__).with_name("examples_prelude.py")
TITLE = re.compile(r'title="(?P<name>[A-Za-z_][A-Za-z0-9_/]*\.py)"')


def pages() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def write_examples(page: Path, folder: Path) -> int:
    """Write the page's Python blocks into `folder`; how many there were."""
    count = 0
    for number, match in enumerate(FENCE.finditer(page.read_text()), start=1):
        title = TITLE.search(match.group("options"))
        name = title.group("name") if title else f"example_{number}.py"
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        earlier = target.read_text() + "\n\n" if target.exists() else ""
        target.write_text(earlier + _as_module(match.group("code")))
        count += 1
    return count


def _as_module(code: str) -> str:
    """The block as it is, or, for a snippet, wrapped in a function after the prelude.

    A snippet awaits at its top level, or imports nothing (it uses `backend` and the
    prelude's placeholders).
    """
    try:
        compile(code, "<example>", "exec", flags=0, dont_inherit=True)
    except SyntaxError as exc:
        if "outside" not in str(exc) and "asynchronous" not in str(exc):
            return code  # a real syntax error: mypy reports it
    else:
        if re.search(r"^(import|from) ", code, re.MULTILINE):
            return code
    body = "".join(f"    {line}" if line.strip() else line for line in code.splitlines(True))
    return f"{PRELUDE.read_text()}\n\nasync def snippet(backend: Backend) -> None:\n{body}"


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="abe-examples-") as work:
        cache = Path(work) / ".mypy_cache"
        for page in pages():
            folder = Path(work) / page.relative_to(ROOT).with_suffix("").as_posix().replace(
                "/", "__"
            )
            folder.mkdir()
            if not write_examples(page, folder):
                continue
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mypy",
                    "--strict",
                    "--cache-dir",
                    str(cache),
                    "--no-error-summary",
                    "--explicit-package-bases",
                    ".",
                ],
                cwd=folder,
                capture_output=True,
                text=True,
                check=False,
            )
            shown = page.relative_to(ROOT)
            if run.returncode:
                failures += 1
                print(f"FAIL {shown}\n{run.stdout}{run.stderr}")
            else:
                print(f"ok   {shown}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
