"""The page runner on small pages written here (offline): a page that drifts from what runs fails.

A changed output line, a failing command and a Python block with a syntax error each fail
the page, naming the page, the line, the command and its output; a name given twice or
to no block fails before anything runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from page_runner import (
    Command,
    PageError,
    PageFailure,
    WriteFile,
    match_output,
    normalise,
    read_page,
    run_page,
)
from reader import ROOT

FENCE = "```"

SERVICE = f"""\
Save this as `service.py`:

{FENCE}python
import signal

try:
    print("ready", flush=True)
    signal.pause()
except KeyboardInterrupt:
    print("stopped", flush=True)
{FENCE}
"""

GOOD = f"""\
# A page

{FENCE}bash
mkdir work
cd work
export GREETING=hello
{FENCE}

{SERVICE}
{FENCE}console
$ echo "$GREETING from $(basename "$PWD")"
hello from work
$ printf 'a\\nb\\nc\\nd\\n'
a
...
d
$ echo "took 12.5 ms at 2026-12-05 09:07:13,506 [4242]" >&2
took 3.1 ms at 2031-01-01 00:00:00,000 [1]
$ python3 service.py
ready
^Cstopped
{FENCE}

An excerpt, not a step:

{FENCE}python
this is not run
{FENCE}
"""


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    (tmp_path / "run").mkdir(exist_ok=True)
    return page


def _run(page: Path, timeout: float = 30) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_page(page, cwd=page.parent / "run", env=env, timeout=timeout)


def _fails(page: Path, timeout: float = 30) -> PageFailure:
    with pytest.raises(PageFailure) as failed:
        _run(page, timeout)
    return failed.value


def _line_of(page: Path, text: str) -> int:
    return page.read_text().splitlines().index(text) + 1


def test_a_page_that_matches_what_runs_passes(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD)
    _run(page)
    assert (tmp_path / "run" / "work" / "service.py").is_file()  # saved where the shell was


def test_a_changed_output_line_fails_the_page(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD.replace("hello from work", "hello from play"))
    failure = _fails(page)
    assert failure.line == _line_of(page, '$ echo "$GREETING from $(basename "$PWD")"')
    assert failure.command == 'echo "$GREETING from $(basename "$PWD")"'
    assert failure.output == "hello from work"
    assert "was not printed: 'hello from play'" in str(failure)
    assert str(failure).startswith(f"{page}:{failure.line}: printed other than the page shows")


def test_a_line_the_page_does_not_show_fails_it(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD.replace("a\n...\nd\n", "a\nb\nd\n"))
    failure = _fails(page)
    assert failure.command == "printf 'a\\nb\\nc\\nd\\n'"
    assert "differ" in failure.reason


def test_a_failing_command_fails_the_page(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD.replace("cd work\n", "cd work\nls no-such-file\n"))
    failure = _fails(page)
    assert failure.line == _line_of(page, "ls no-such-file")
    assert failure.reason == "exited with status 2"
    assert "no-such-file" in failure.output
    assert "--- command ---\nls no-such-file\n--- output ---\nls: " in str(failure)


def test_a_python_block_with_a_syntax_error_fails_the_page(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD.replace("    signal.pause()", "    signal.pause("))
    failure = _fails(page)
    assert failure.command == "(save as service.py)"
    assert failure.line == _line_of(page, "    signal.pause(")  # where the error is reported
    assert not (tmp_path / "run" / "work" / "service.py").exists()


def test_output_after_the_interrupt_is_checked(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD.replace("^Cstopped", "^Cstopped at once"))
    failure = _fails(page)
    assert failure.command == "python3 service.py"
    assert failure.output == "ready\nstopped"


def test_output_that_cannot_come_before_the_interrupt_fails_at_once(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD.replace("ready\n^C", "set\n^C"))
    started = time.monotonic()
    failure = _fails(page, timeout=60)
    assert time.monotonic() - started < 30  # not the whole timeout: "ready" can never match
    assert "before ^C" in failure.reason
    assert failure.output == "ready"


def test_a_command_still_quiet_at_the_timeout_fails(tmp_path: Path) -> None:
    page = _page(tmp_path, f"{FENCE}console\n$ sleep 30\n{FENCE}\n")
    failure = _fails(page, timeout=0.5)
    assert failure.reason == "no output came in time"


def test_replacements_make_the_page_s_placeholders_real(tmp_path: Path) -> None:
    """A page path in a command is the run's, and the run's path in output is the page's."""
    home = tmp_path / "home"
    home.mkdir()
    shown = "/no-such-home/you"
    page = _page(tmp_path, f"{FENCE}console\n$ cd {shown} && pwd\n{shown}\n{FENCE}\n")
    env = {**os.environ, "HOME": str(home)}
    run_page(page, cwd=tmp_path / "run", env=env, replacements=[(shown, str(home))])
    with pytest.raises(PageFailure) as failed:
        run_page(page, cwd=tmp_path / "run", env=env)  # no replacement: no such folder
    assert failed.value.reason == "exited with status 1"


def test_the_python_block_is_named_by_its_title_or_the_prose(tmp_path: Path) -> None:
    text = (
        f'{FENCE}python title="a.py"\nA = 1\n{FENCE}\n\n'
        f"Save the\nproducer as `b.py`:\n\n{FENCE}python\nB = 2\n{FENCE}\n\n"
        f'and the worker as `c.py`.\n\n{FENCE}python title="c.py"\nC = 3\n{FENCE}\n'
    )
    steps = read_page(_page(tmp_path, text))
    assert steps == [
        WriteFile(1, "a.py", "A = 1\n"),
        WriteFile(8, "b.py", "B = 2\n"),
        WriteFile(14, "c.py", "C = 3\n"),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f'Save this as `a.py`:\n\n{FENCE}python title="b.py"\nA = 1\n{FENCE}\n', "a.py or b.py"),
        (f"Save this as `a.py` and the\nworker as `b.py`:\n\n{FENCE}python\n{FENCE}\n", "2 files"),
        (f"Save this as `a.py`:\n\n{FENCE}bash\nls\n{FENCE}\n", "but a bash block follows"),
        ("Save this as `a.py`.\n", "but no block follows"),
        (f"{FENCE}sh\nls\n{FENCE}\n", "as bash or console, not sh"),
        (f"{FENCE}console\nhello\n{FENCE}\n", "must start with a `$ ` command"),
        (f"<!-- not run -->\n{FENCE}bash\nls\n{FENCE}\n", "<!-- not run: REASON -->"),
        (f"{FENCE}bash\nls\n", "never closed"),
    ],
)
def test_a_page_the_runner_would_have_to_guess_at_fails(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(PageError, match=r"page\.md:") as refused:
        read_page(_page(tmp_path, text))
    assert says in str(refused.value)


def test_blocks_that_are_not_steps(tmp_path: Path) -> None:
    text = (
        f"<!-- not run: it uploads -->\n{FENCE}bash\ntwine upload dist/*\n{FENCE}\n\n"
        f"{FENCE}text\nls\n{FENCE}\n\n{FENCE}python\nexcerpt()\n{FENCE}\n\n"
        f"{FENCE}bash\n# a comment\n\necho one \\\n  two\n{FENCE}\n"
    )
    assert read_page(_page(tmp_path, text)) == [Command(17, "echo one \\\n  two")]


def test_normalising_makes_what_changes_between_runs_equal() -> None:
    shown = "2026-12-05 09:07:13,506 INFO abe.run [25822] round trip in 48.9 ms, 21.69s  "
    printed = "2031-01-02 10:11:12,000 INFO abe.run [7] round trip in 0.2 ms, 3.0s"
    assert normalise(shown) == normalise(printed)
    assert normalise("=== 47 passed in 21.69s ====") == "=== 47 passed in <duration> ==="
    assert normalise("  *  redis   abe-mq-redis 0.1.0") == " * redis abe-mq-redis 0.1.0"
    assert normalise("shutdown timeout 30s") == "shutdown timeout 30s"  # a setting, not a timing


def test_matching_output() -> None:
    assert match_output(["a", "...", "z"], ["a", "b", "c", "z"]) is None
    assert match_output(["a", "..."], ["a"]) is None
    assert match_output(["warning: ..."], ["warning: anything at all"]) is None
    assert match_output(["a", "b"], ["b", "a"]) is not None
    assert match_output(["a"], ["a", "more"]) is not None
    assert match_output(["a"], ["a", "", ""]) is None  # trailing blank lines


@pytest.mark.parametrize("name", ["getting-started.md", "writing-a-provider.md"])
def test_the_documented_pages_read_by_these_rules(name: str) -> None:
    """The pages test_pages.py runs have steps, checked output, and files to save."""
    steps = read_page(ROOT / "docs" / name)
    assert any(isinstance(step, Command) and step.shown for step in steps)
    assert any(isinstance(step, WriteFile) for step in steps) or name != "getting-started.md"
