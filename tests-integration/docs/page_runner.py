"""Run a documentation page as its reader would: its shell, console and Python blocks, in order.

The rules a page is read by:

- ```bash: every line is a command (a line ending in `\\` goes on on the next; blank and
  `#` lines are skipped). All commands of a page run one after another in ONE bash
  process, so `cd`, `export` and `. .venv/bin/activate` carry over as in a terminal
  (stdin is /dev/null: nothing waits for input). A command that exits other than 0
  fails the page.
- ```console: a line starting with `$ ` is a command, run the same way; the lines after
  it, up to the next `$ `, are its output as the page shows it, checked by the rule below.
  A command shown without output is only run.
- A shown output line starting with `^C`: the command runs until it is interrupted. It
  is started as a job of its own; once its output matches the lines shown before the
  `^C`, its process group gets SIGINT (what Ctrl-C sends), and when it has exited (with
  status 0) all its output must match all the lines shown, `^C` removed. Nothing
  sleeps: the runner waits for lines of output, with a time limit, and fails at once
  when the output can no longer match.
- ```python: a file, written in the folder the shell is in, named by `title="x.py"` on
  the fence or by the prose just before it ("Save this as `x.py`", "Save the producer as
  `x.py`", "and the worker as `x.py`"); it must compile. A block named neither way is an
  excerpt, not a step. A block named twice differently, or a sentence that names a file
  no Python block follows, fails the page rather than be guessed at.
- `<!-- not run: REASON -->` as the line before a fence: that block is not a step (a
  `twine upload`, say). A block in any other language is not a step either.

How shown output is checked against what the command printed (stdout and stderr
together, as a terminal shows them):

- a line `...` stands for any number of lines, none included; a line ending in `...`
  matches any line that starts with the text before it;
- every other line must match one printed line, in order, with no other line between,
  before or after;
- both sides are normalised first: date-times (`2026-12-05 09:07:13,506`) become
  `<time>`, a number in brackets (`[25822]`, a process id) `[<pid>]`, a duration with a
  decimal point (`48.9 ms`, `21.69s`) `<duration>`, rulers of 3 or more `=` or `-`
  (pytest's) `===` or `---`; runs of spaces count as one, trailing spaces and trailing
  blank lines are dropped;
- `replacements` (page text, run text) pairs make the page's placeholders real: each
  page text is replaced by its run text in commands, and each run text by its page text
  in the output (`/home/you` and the run's HOME, for instance).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Command",
    "PageError",
    "PageFailure",
    "WriteFile",
    "could_match",
    "match_output",
    "normalise",
    "read_page",
    "run_page",
]

ELLIPSIS = "..."
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<lang>[\w+-]*)(?P<options>.*)$")
_TITLE = re.compile(r'title="(?P<name>[^"]+)"')
_SAVE = re.compile(
    r"(?:\bSave\s+(?:this|the\s+[a-z-]+)|\band\s+the\s+[a-z-]+)\s+as\s+`(?P<name>[^`\s]+\.py)`"
)
_NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>\S.*?) -->$")
_SHELLS = frozenset({"sh", "shell", "zsh", "shell-session"})
"""Shell fences the runner refuses: it knows `bash` and `console` only."""
_NORMALISE = [
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?"), "<time>"),
    (re.compile(r"\[\d+\]"), "[<pid>]"),
    (re.compile(r"\b\d+\.\d+ ?m?s\b"), "<duration>"),
    (re.compile(r"={3,}"), "==="),
    (re.compile(r"-{3,}"), "---"),
    (re.compile(r" {2,}"), " "),
]


class PageError(Exception):
    """The page cannot be read by the rules above (the page's fault, found before running)."""


@dataclass(frozen=True)
class Command:
    """A shell command at `line` of the page, with the output the page shows for it."""

    line: int
    text: str
    shown: tuple[str, ...] = ()
    """The output shown (before the `^C`, if any); empty: not checked."""
    after_interrupt: tuple[str, ...] | None = None
    """The output shown from `^C` on; None when the command runs to its end."""


@dataclass(frozen=True)
class WriteFile:
    """A Python block at `line`, to be saved as `name` in the shell's current folder."""

    line: int
    name: str
    text: str


Step = Command | WriteFile


class PageFailure(AssertionError):
    """A step of the page failed: where, what ran, what it printed and why it failed."""

    def __init__(self, page: Path, line: int, command: str, output: str, reason: str) -> None:
        super().__init__(reason)
        self.page, self.line, self.command, self.output = page, line, command, output
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"{self.page}:{self.line}: {self.reason}\n"
            f"--- command ---\n{self.command}\n"
            f"--- output ---\n{self.output.rstrip() or '(none)'}"
        )


# ---- reading a page -------------------------------------------------------------------------


def read_page(page: Path) -> list[Step]:
    """The page's steps, in order; PageError when a block cannot be read unambiguously."""
    lines = page.read_text(encoding="utf-8").splitlines()
    steps: list[Step] = []
    prose: list[tuple[int, str]] = []  # (line number, text) since the last fence
    number = 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        if opening is None:
            prose.append((number + 1, lines[number]))
            number += 1
            continue
        start = number + 1  # the fence's own line number, 1-based
        indent, fence = len(opening["indent"]), opening["fence"]
        body: list[str] = []
        number += 1
        while number < len(lines) and lines[number].strip() != fence:
            body.append(
                lines[number][indent:] if lines[number][:indent].isspace() else lines[number]
            )
            number += 1
        if number == len(lines):
            raise PageError(f"{page}:{start}: this ``` block is never closed")
        number += 1
        steps += _block(page, start, opening, body=body, prose=prose)
        prose = []
    if named := _save_sentences(prose):
        raise PageError(f"{page}:{named[0][0]}: names {named[0][1]!r}, but no block follows")
    return steps


def _block(
    page: Path,
    start: int,
    opening: re.Match[str],
    *,
    body: list[str],
    prose: list[tuple[int, str]],
) -> list[Step]:
    """The steps of the block opened by `opening`, given the prose since the previous block."""
    lang, options = opening["lang"], opening["options"]
    named = _save_sentences(prose)
    where = f"{page}:{start}"
    if len(named) > 1:
        raise PageError(f"{where}: the prose before this block names {len(named)} files")
    if named and lang != "python":
        raise PageError(f"{page}:{named[0][0]}: names {named[0][1]!r}, but a {lang} block follows")
    before = next((text.strip() for _, text in reversed(prose) if text.strip()), "")
    if _NOT_RUN.match(before):
        return []
    if before.startswith("<!-- not run"):
        raise PageError(f"{where}: write the marker as `<!-- not run: REASON -->`")
    if lang in _SHELLS:
        raise PageError(f"{where}: fence shell commands as bash or console, not {lang}")
    if lang == "bash":
        return [Command(line, text) for line, text in _commands(start, body)]
    if lang == "console":
        return _console(where, start, body)
    if lang != "python":
        return []
    title = _TITLE.search(options)
    names = {title["name"]} if title else set()
    names |= {name for _, name in named}
    if len(names) > 1:
        raise PageError(f"{where}: is it {' or '.join(sorted(names))}? The page names both")
    if not names:
        return []  # an excerpt
    return [WriteFile(start, names.pop(), "\n".join(body) + "\n")]


def _save_sentences(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line, file name) of each "Save this as `x.py`" in the prose, which may wrap lines."""
    text = "\n".join(line for _, line in prose)
    found = []
    for match in _SAVE.finditer(text):
        line = prose[text.count("\n", 0, match.start())][0] if prose else 0
        found.append((line, match["name"]))
    return found


def _commands(start: int, body: list[str]) -> Iterator[tuple[int, str]]:
    """(line, command) for each command of a bash block; `\\` continues a line."""
    pending: list[str] = []
    first = 0
    for offset, text in enumerate(body, start=1):
        if not pending and (not text.strip() or text.lstrip().startswith("#")):
            continue
        if not pending:
            first = start + offset
        pending.append(text)
        if not text.endswith("\\"):
            yield first, "\n".join(pending)
            pending = []
    if pending:
        yield first, "\n".join(pending)


def _console(where: str, start: int, body: list[str]) -> list[Step]:
    """The commands of a console block, each with the output shown after it."""
    found: list[tuple[int, list[str], list[str]]] = []  # (line, command lines, output)
    for offset, text in enumerate(body, start=1):
        if found and found[-1][1][-1].endswith("\\") and not found[-1][2]:
            found[-1][1].append(text.removeprefix("> "))
        elif text.startswith("$ "):
            found.append((start + offset, [text[2:]], []))
        elif not found:
            raise PageError(f"{where}: a console block must start with a `$ ` command")
        else:
            found[-1][2].append(text)
    steps: list[Step] = []
    for line, command, output in found:
        while output and not output[-1].strip():
            output.pop()
        cuts = [index for index, text in enumerate(output) if text.startswith("^C")]
        if len(cuts) > 1:
            raise PageError(f"{where}: the output of line {line} shows ^C twice")
        if not cuts:
            steps.append(Command(line, "\n".join(command), tuple(output)))
            continue
        cut = cuts[0]
        rest = output[cut][2:]
        after = ([rest] if rest.strip() else []) + output[cut + 1 :]
        steps.append(Command(line, "\n".join(command), tuple(output[:cut]), tuple(after)))
    return steps


# ---- checking output ------------------------------------------------------------------------


def normalise(line: str) -> str:
    """`line` with what changes from run to run (times, pids, durations, widths) made equal."""
    for pattern, replacement in _NORMALISE:
        line = pattern.sub(replacement, line)
    return line.rstrip()


def match_output(shown: Sequence[str], printed: Sequence[str]) -> str | None:
    """None when `printed` is what `shown` shows; otherwise what differs."""
    pattern = tuple(normalise(line) for line in shown)
    actual = tuple(normalise(line) for line in printed)
    while actual and not actual[-1]:
        actual = actual[:-1]
    if _matches(pattern, actual):
        return None
    for index, line in enumerate(pattern):
        if line != ELLIPSIS and not any(_line_matches(line, text) for text in actual):
            return f"shown output line {index + 1} was not printed: {shown[index]!r}"
    return "the printed lines differ from those shown (order, or lines the page does not show)"


def _line_matches(shown: str, printed: str) -> bool:
    if shown.endswith(ELLIPSIS):
        return printed.startswith(shown[: -len(ELLIPSIS)].rstrip())
    return shown == printed


def _matches(pattern: tuple[str, ...], actual: tuple[str, ...], *, partial: bool = False) -> bool:
    """Whether `actual` matches `pattern`; with `partial`, whether more lines still could."""
    n, m = len(pattern), len(actual)
    # ok[i][j]: pattern[i:] matches actual[j:] (filled from the end, no recursion)
    ok = [[False] * (m + 1) for _ in range(n + 1)]
    ok[n][m] = True
    for i in reversed(range(n)):
        ok[i][m] = partial or (pattern[i] == ELLIPSIS and ok[i + 1][m])
        for j in reversed(range(m)):
            if pattern[i] == ELLIPSIS:
                ok[i][j] = ok[i + 1][j] or ok[i][j + 1]
            else:
                ok[i][j] = _line_matches(pattern[i], actual[j]) and ok[i + 1][j + 1]
    return ok[0][0]


def could_match(shown: Sequence[str], printed: Sequence[str]) -> bool:
    """Whether lines printed after `printed` could still make it match `shown`."""
    pattern = tuple(normalise(line) for line in shown)
    return _matches(pattern, tuple(normalise(line) for line in printed), partial=True)


# ---- running --------------------------------------------------------------------------------


class _ShellExited(Exception):
    """The page's bash process ended (a syntax error, `exit`) or a wait timed out."""


class Shell:
    """One bash process for a page: commands in; their output and exit status out."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-s"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            text=True,
            start_new_session=True,  # what it runs in the foreground can be ended with it
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._mark = f"__page_runner_{uuid.uuid4().hex}__"
        self._jobs: list[int] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _send(self, text: str) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(text)
            self._process.stdin.flush()
        except BrokenPipeError:
            pass  # the shell is gone: reading its output says so

    def next_line(self, deadline: float) -> str:
        """The next line the shell or a job prints, waiting until `deadline` (monotonic)."""
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise _ShellExited("no output came in time") from None
        if line is None:
            raise _ShellExited(f"the shell exited (status {self._process.wait()})")
        return line

    def _until_mark(self, timeout: float, seen: list[str], mark: str) -> int:
        """Collect lines into `seen` up to the line `MARK NUMBER`; the number."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(deadline)
            before, found, after = line.partition(f"{mark} ")
            if not found:
                seen.append(line)
                continue
            if before:
                seen.append(before)  # a job's line without its newline yet
            elif seen and not seen[-1]:
                seen.pop()  # the newline the mark is printed after
            return int(after)

    def run(self, command: str, timeout: float, seen: list[str]) -> int:
        """Run `command`, its output into `seen`; its exit status."""
        self._send(f"{{ {command}\n}} </dev/null\nprintf '\\n%s %s\\n' {self._mark} \"$?\"\n")
        return self._until_mark(timeout, seen, self._mark)

    def start(self, command: str, timeout: float, seen: list[str]) -> int:
        """Start `command` as a job in a process group of its own, as a terminal runs it; its pid.

        `set -m` (job control) only while it starts: so its SIGINT is not ignored, as it
        would be in a background job of a script, and the group can be signalled whole.
        """
        job = f"{self._mark}-job"
        self._send(f'set -m\n{{ {command}\n}} </dev/null &\nset +m\necho {job} "$!"\n')
        pid = self._until_mark(timeout, seen, job)
        self._jobs.append(pid)
        return pid

    def interrupt(self, pid: int, timeout: float, seen: list[str]) -> int:
        """Send SIGINT to the job's process group, as Ctrl-C does; its exit status."""
        self._send(f"kill -INT -- -{pid}\nwait {pid}\nprintf '\\n%s %s\\n' {self._mark} \"$?\"\n")
        status = self._until_mark(timeout, seen, self._mark)
        self._jobs.remove(pid)
        return status

    def cwd(self) -> Path:
        """The folder the shell is in now."""
        seen: list[str] = []
        self.run("pwd", 30, seen)
        return Path(seen[-1])

    def close(self) -> None:
        """End the shell, what it runs, and any job still running."""
        for pid in [*self._jobs, self._process.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()


def run_page(
    page: Path,
    *,
    cwd: Path,
    env: Mapping[str, str],
    replacements: Sequence[tuple[str, str]] = (),
    timeout: float = 300,
) -> None:
    """Run every step of `page` in one shell started in `cwd`; PageFailure at the first failing.

    `timeout` bounds each command, and the wait for the output shown before a `^C`.
    """
    steps = read_page(page)
    shell = Shell(cwd, env)
    try:
        for step in steps:
            if isinstance(step, WriteFile):
                _write(page, shell, step)
            else:
                _Run(page, shell, step, replacements, timeout).run()
    finally:
        shell.close()


def _write(page: Path, shell: Shell, step: WriteFile) -> None:
    try:
        compile(step.text, step.name, "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = step.line + (exc.lineno or 0)
        raise PageFailure(page, line, f"(save as {step.name})", step.text, str(exc)) from None
    target = shell.cwd() / step.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(step.text, encoding="utf-8")
    print(f"(saved {target})  # {page.name}:{step.line}", flush=True)


class _Run:
    """One command of the page, run and checked."""

    def __init__(
        self,
        page: Path,
        shell: Shell,
        step: Command,
        replacements: Sequence[tuple[str, str]],
        timeout: float,
    ) -> None:
        self.page, self.shell, self.step, self.timeout = page, shell, step, timeout
        # longest run text first, so one inside another (a folder in HOME) is not split
        self.replacements = sorted(replacements, key=lambda pair: -len(pair[1]))
        self.seen: list[str] = []

    def printed(self, start: int = 0) -> list[str]:
        """What the command printed from line `start`, with run texts back as the page's."""
        lines = self.seen[start:]
        for shown, real in self.replacements:
            lines = [line.replace(real, shown) for line in lines]
        return lines

    def fail(self, reason: str) -> PageFailure:
        output = "\n".join(self.printed())
        return PageFailure(self.page, self.step.line, self.step.text, output, reason)

    def run(self) -> None:
        text = self.step.text
        for shown, real in self.replacements:
            text = text.replace(shown, real)
        print(f"$ {text}  # {self.page.name}:{self.step.line}", flush=True)  # the transcript
        started = time.monotonic()
        try:
            if self.step.after_interrupt is None:
                self._to_the_end(text)
            else:
                self._until_interrupted(text, self.step.after_interrupt)
        except _ShellExited as exc:
            raise self.fail(str(exc)) from None
        finally:
            print(*self.seen, f"({time.monotonic() - started:.1f} s)", sep="\n", flush=True)

    def _to_the_end(self, text: str) -> None:
        status = self.shell.run(text, self.timeout, self.seen)
        if status != 0:
            raise self.fail(f"exited with status {status}")
        if self.step.shown and (differs := match_output(self.step.shown, self.printed())):
            raise self.fail(f"printed other than the page shows: {differs}")

    def _until_interrupted(self, text: str, after: Sequence[str]) -> None:
        """Run until the output matches the lines before ^C; SIGINT; then check it all.

        The whole output is checked against all the lines shown, so a line the page
        leaves to a `...` before the ^C may come just after the interrupt was sent.
        """
        pid = self.shell.start(text, self.timeout, self.seen)
        deadline = time.monotonic() + self.timeout
        while (differs := match_output(self.step.shown, self.printed())) is not None:
            if not could_match(self.step.shown, self.printed()):
                raise self.fail(f"before ^C: {differs}")
            try:
                self.seen.append(self.shell.next_line(deadline))
            except _ShellExited as exc:
                raise self.fail(f"before ^C: {differs} ({exc})") from None
        status = self.shell.interrupt(pid, self.timeout, self.seen)
        if status != 0:
            raise self.fail(f"exited with status {status} after SIGINT")
        if differs := match_output([*self.step.shown, *after], self.printed()):
            raise self.fail(f"printed other than the page shows: {differs}")
