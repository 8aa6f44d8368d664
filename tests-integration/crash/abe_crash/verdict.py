"""The verdict of a crash run: what was lost, which duplicates and why, stalls, time to resume.

A pure function of what the run observed (:class:`Evidence`), so that it can be tested
without brokers. The rules:

- lost: a confirmed message (its publish returned) that no worker handled. Must be none.
- duplicates: every handling of a message after its first. Each is put down to the first
  of these that fits, comparing it with the handling before it:
  ``killed worker`` (the worker that handled it before was SIGKILLed between the two: it
  had not acknowledged yet), ``broker restart`` (the broker was killed before the second,
  and the first was no later than ``RECONNECT_GRACE`` after the broker answered again:
  its acknowledgement was lost, or failed while the client reconnected), ``published
  twice`` (a publish that raised was retried, or one publish call spanned the broker
  crash, which a client library may resend by itself: two copies were stored), else
  ``live redelivery`` (a member that was not killed gave it back, as in a rebalance, or
  held it past the redelivery timeout).
- where lost messages are: after a run with losses, a new group reads the key and its
  dead-letter key; each lost message is still on the key (the broker kept it, the group
  never got it), on the dead-letter key (with the reason), or on neither (gone).
- bounds: a killed worker can duplicate at most what it held, ``window`` = prefetch +
  concurrency messages; a broker restart at most ``window`` per worker. Live redeliveries
  are what at-least-once allows, but they too must fit the whole budget: ``window`` per
  kill, ``window`` per worker per restart, and one per message published twice.
  On Kafka an acknowledgement is an offset commit, made every commit interval and taking
  a round trip: a killed worker also duplicates what it handled since its last completed
  commit began (less one commit interval, in which acks gather), so each kill adds that
  count, measured from the worker's commits (``Evidence.commits``), to its ``window``.
- offsets confirmed twice (Kafka): two publishes the broker confirmed at one partition
  and offset; a consumer reads only one of them, so the other is lost by the broker.
- stall: the longest time in which confirmed messages waited and none was handled for
  the first time; over ``stall_after`` seconds fails.
- time to resume: after each broker restart, when the first message was handled again,
  and when the first message published after the crash was; and the same from the kill
  itself (``consume_after_kill_s``, ``resumed_after_kill_s``: a message published after
  the kill handled; ``every_worker_resumed_s``: every worker handling again), which for a
  cluster node held down measures the failover.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from abe_crash.records import Confirmed, Handled, message_id

__all__ = [
    "REASONS",
    "Commit",
    "Duplicate",
    "Evidence",
    "Kill",
    "Outage",
    "Placed",
    "Verdict",
    "judge",
    "uncommitted",
]

REASONS = ("killed worker", "broker restart", "published twice", "live redelivery")
RECONNECT_GRACE = 5.0
"""Seconds after a restarted broker answers in which clients may still be reconnecting
(abe's subscriptions back off up to 5 s between reads): an ack then can fail."""


@dataclass(frozen=True)
class Kill:
    """Worker `pid` was SIGKILLed at `at`."""

    at: float
    pid: int


@dataclass(frozen=True)
class Outage:
    """The broker was killed with SIGKILL at `killed_at` and answered again at `ready_at`."""

    killed_at: float
    ready_at: float


@dataclass
class Evidence:
    """Everything one crash run observed, in ``time.monotonic()`` seconds."""

    broker: str
    messages: int
    confirmed: list[Confirmed]
    handled: list[Handled]
    kills: list[Kill]
    outages: list[Outage]
    workers: int
    window: int
    """Most messages one worker holds unacknowledged: prefetch + concurrency."""
    stall_after: float
    started_at: float
    published_at: float | None
    """When the producer exited having confirmed every message (None if it did not)."""
    ended_at: float
    producer_error: str | None = None
    worker_failures: list[str] = field(default_factory=list)
    """Workers that exited on their own, or did not stop on SIGTERM."""
    stall_report: str | None = None
    """What the workers held when the conductor saw the stall (None: no stall seen)."""
    dead_lettered: int = 0
    """Messages the workers' consumers dead-lettered (from their counts)."""
    left_on_broker: list[dict[str, object]] | None = None
    """What a new group read from the key and the dead-letter key after the run (key, n,
    id, attempt, error, attempts); None when nobody looked."""
    notes: list[str] = field(default_factory=list)
    """Things the run could not find out (they do not fail it)."""
    log_lines: dict[str, int] = field(default_factory=dict)
    """Worker log records of level WARNING and above, by "LEVEL logger"."""
    seed: int = 0
    commits: dict[int, list[Commit]] | None = None
    """Kafka: each worker's (by pid) completed offset commits; None on other brokers."""
    placed: list[Placed] = field(default_factory=list)
    """Kafka: where the broker said it stored each publish it confirmed."""
    read_raw: dict[int, list[str]] | None = None
    """Kafka, after a run with losses: each message number a plain aiokafka consumer read
    from every partition's start, with where (``partition@offset``); None: not read."""


@dataclass(frozen=True)
class Commit:
    """A worker's offset commit ran from `started` to `finished`; acks gather for `interval`
    seconds before a commit carries them."""

    started: float
    finished: float
    interval: float


@dataclass(frozen=True)
class Placed:
    """The broker confirmed message `number` at `partition` and `offset`."""

    number: int
    partition: int
    offset: int


@dataclass(frozen=True)
class Duplicate:
    """`again` handled message `number` a second (or later) time after `before` had."""

    number: int
    before: Handled
    again: Handled
    reason: str
    kill: int | None = None
    """Index in Evidence.kills of the kill it is put down to."""
    outage: int | None = None
    """Index in Evidence.outages of the restart it is put down to."""


@dataclass
class Verdict:
    """Figures to report and the problems that fail the run (none: it passed)."""

    broker: str
    figures: dict[str, float | int | str]
    problems: list[str]
    duplicates: list[Duplicate]

    @property
    def ok(self) -> bool:
        """Whether nothing was lost, nothing stalled and duplicates stayed in bounds."""
        return not self.problems

    def summary(self) -> str:
        """One line of the figures, for the terminal."""
        f = self.figures
        reasons = ", ".join(f"{reason} {f[_key(reason)]}" for reason in REASONS if f[_key(reason)])
        parts = [
            f"confirmed {f['confirmed']}/{f['messages']}",
            f"delivered {f['delivered']}",
            f"lost {f['lost']}",
            f"duplicates {f['duplicates']}" + (f" ({reasons})" if reasons else ""),
            f"{f['kills']} kills (at most {f['most_duplicates_per_kill']} duplicates per kill,"
            f" bound {f['most_allowed_per_kill']})",
        ]
        if "broker_down_s" in f:
            parts.append(
                f"broker down {_s(f['broker_down_s'])}, handling again "
                f"{_s(f['consume_resumed_s'])} after restart (new messages "
                f"{_s(f['new_messages_handled_s'])}); a message published after the kill "
                f"handled {_s(f['resumed_after_kill_s'])} after it"
            )
        parts.append(f"longest pause {_s(f['longest_pause_s'])}")
        parts.append(f"run {_s(f['run_s'])}")
        verdict = "OK" if self.ok else f"FAILED ({len(self.problems)} problem(s))"
        return f"crash {self.broker}: " + "; ".join(parts) + f" - {verdict}"


def _s(seconds: float | int | str) -> str:
    """Seconds for the summary line: "1.2s", or "never"."""
    return seconds if isinstance(seconds, str) else f"{seconds}s"


def _key(reason: str) -> str:
    return "duplicates_" + reason.replace(" ", "_")


def _round(seconds: float | None) -> float | str:
    return "never" if seconds is None else round(seconds, 2)


def classify(evidence: Evidence) -> list[Duplicate]:
    """Every handling after a message's first, with the reason it happened."""
    killed_at = {kill.pid: (index, kill.at) for index, kill in enumerate(evidence.kills)}
    twice = published_twice(evidence)
    by_number: defaultdict[int, list[Handled]] = defaultdict(list)
    for handled in evidence.handled:
        by_number[handled.number].append(handled)
    duplicates: list[Duplicate] = []
    for number, handlings in sorted(by_number.items()):
        handlings.sort(key=lambda h: h.at)
        for before, again in itertools.pairwise(handlings):
            kill = killed_at.get(before.pid)
            if kill is not None and before.at <= kill[1] <= again.at:
                duplicates.append(Duplicate(number, before, again, "killed worker", kill=kill[0]))
                continue
            outage = next(
                (
                    index
                    for index, o in enumerate(evidence.outages)
                    if o.killed_at <= again.at and before.at <= o.ready_at + RECONNECT_GRACE
                ),
                None,
            )
            if outage is not None:
                duplicates.append(Duplicate(number, before, again, "broker restart", outage=outage))
            elif number in twice:
                duplicates.append(Duplicate(number, before, again, "published twice"))
            else:
                duplicates.append(Duplicate(number, before, again, "live redelivery"))
    return duplicates


def published_twice(evidence: Evidence) -> set[int]:
    """Messages that may be on the broker twice: retried, or published across a crash."""
    return {
        c.number
        for c in evidence.confirmed
        if c.attempts > 1
        or any(c.started <= o.ready_at and c.at >= o.killed_at for o in evidence.outages)
    }


def longest_pause(evidence: Evidence) -> tuple[float, float]:
    """The longest time (and when it began) in which confirmed messages waited, none handled.

    Progress is a message handled for the first time. The clock runs only while some
    confirmed message is still unhandled; it starts again at each progress.
    """
    first_handled: dict[int, float] = {}
    for handled in evidence.handled:
        if handled.at < first_handled.get(handled.number, float("inf")):
            first_handled[handled.number] = handled.at
    events: list[tuple[float, int, int]] = [(c.at, 0, c.number) for c in evidence.confirmed]
    events += [(at, 1, number) for number, at in first_handled.items()]
    events.sort()
    confirmed: set[int] = set()
    done: set[int] = set()
    waiting = 0
    since = evidence.started_at
    longest, began = 0.0, evidence.started_at
    for at, kind, number in events:
        if waiting and at - since > longest:
            longest, began = at - since, since
        if kind == 0:
            confirmed.add(number)
            if number not in done:
                waiting += 1
                if waiting == 1:
                    since = at
        else:
            done.add(number)
            if number in confirmed:
                waiting -= 1
            since = at
    if waiting and evidence.ended_at - since > longest:
        longest, began = evidence.ended_at - since, since
    return longest, began


def _every_worker(evidence: Evidence, outage: Outage) -> float | None:
    """Seconds from the kill until every worker that handled messages before it (and was not
    killed) handled one again: the slowest client's failover. None if one never did."""
    killed = {kill.pid for kill in evidence.kills}
    before = {h.pid for h in evidence.handled if h.at < outage.killed_at} - killed
    later: dict[int, float] = {}
    for h in evidence.handled:
        if h.pid in before and h.at >= outage.killed_at:
            later[h.pid] = min(later.get(h.pid, h.at), h.at)
    if not before or len(later) < len(before):
        return None
    return max(later.values()) - outage.killed_at


def _first_after(times: Iterable[float], moment: float) -> float | None:
    later = [at for at in times if at >= moment]
    return min(later) - moment if later else None


def uncommitted(evidence: Evidence, kill: Kill) -> int:
    """Kafka: what the worker killed by `kill` handled that no completed commit can have
    carried: since its last commit finished before the kill began, less one commit interval
    (acks gather that long before a commit takes them). 0 on brokers without commits."""
    if evidence.commits is None:
        return 0
    done = [c for c in evidence.commits.get(kill.pid, []) if c.finished <= kill.at]
    since = max((c.started - c.interval for c in done), default=float("-inf"))
    return sum(1 for h in evidence.handled if h.pid == kill.pid and since < h.at <= kill.at)


def offsets_confirmed_twice(evidence: Evidence) -> list[tuple[int, int, list[int]]]:
    """(partition, offset, numbers) where the broker confirmed different messages."""
    at: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for placed in evidence.placed:
        at[(placed.partition, placed.offset)].add(placed.number)
    return [(p, o, sorted(numbers)) for (p, o), numbers in sorted(at.items()) if len(numbers) > 1]


def judge(evidence: Evidence) -> Verdict:
    """The figures of a run and every problem that fails it."""
    problems: list[str] = []
    confirmed = {c.number: c for c in evidence.confirmed}
    handled_numbers = {h.number for h in evidence.handled}
    lost = sorted(set(confirmed) - handled_numbers)
    duplicates = classify(evidence)
    reasons = Counter(d.reason for d in duplicates)
    per_kill = Counter(d.kill for d in duplicates if d.kill is not None)
    per_outage = Counter(d.outage for d in duplicates if d.outage is not None)
    window = evidence.window
    allowed = [window + uncommitted(evidence, kill) for kill in evidence.kills]
    twice_placed = offsets_confirmed_twice(evidence)
    pause, pause_began = longest_pause(evidence)
    start = evidence.started_at

    figures: dict[str, float | int | str] = {
        "messages": evidence.messages,
        "confirmed": len(confirmed),
        "publish_retried": sum(1 for c in evidence.confirmed if c.attempts > 1),
        "published_across_crash": len(published_twice(evidence)),
        "publish_attempts": sum(c.attempts for c in evidence.confirmed),
        "delivered": len(evidence.handled),
        "handled": len(handled_numbers),
        "handled_unconfirmed": len(handled_numbers - set(confirmed)),
        "lost": len(lost),
        "duplicates": len(duplicates),
        **{_key(reason): reasons[reason] for reason in REASONS},
        "kills": len(evidence.kills),
        "window": window,
        "most_allowed_per_kill": max(allowed, default=window),
        "offsets_confirmed_twice": len(twice_placed),
        "most_duplicates_per_kill": max(per_kill.values(), default=0),
        "dead_lettered": evidence.dead_lettered,
        "longest_pause_s": _round(pause),
        "longest_pause_began_s": _round(pause_began - start),
        "publish_s": _round(
            None if evidence.published_at is None else evidence.published_at - start
        ),
        "run_s": _round(evidence.ended_at - start),
        "seed": evidence.seed,
    }
    all_handled_at = _all_handled_at(evidence, set(confirmed))
    if all_handled_at is not None and evidence.published_at is not None:
        figures["drain_s"] = _round(max(0.0, all_handled_at - evidence.published_at))
    for index, outage in enumerate(evidence.outages):
        suffix = "" if index == 0 else f"_{index + 1}"
        new = {c.number for c in evidence.confirmed if c.at > outage.killed_at}
        new_handled = [h.at for h in evidence.handled if h.number in new]
        figures["broker_killed_at_s" + suffix] = _round(outage.killed_at - start)
        figures["broker_down_s" + suffix] = _round(outage.ready_at - outage.killed_at)
        figures["publish_resumed_s" + suffix] = _round(
            _first_after((c.at for c in evidence.confirmed), outage.ready_at)
        )
        figures["consume_resumed_s" + suffix] = _round(
            _first_after((h.at for h in evidence.handled), outage.ready_at)
        )
        figures["new_messages_handled_s" + suffix] = _round(
            _first_after(new_handled, outage.ready_at)
        )
        # From the kill itself: a cluster keeps serving while one node is down.
        after_kill = {c.number for c in evidence.confirmed if c.started >= outage.killed_at}
        figures["consume_after_kill_s" + suffix] = _round(
            _first_after((h.at for h in evidence.handled), outage.killed_at)
        )
        figures["resumed_after_kill_s" + suffix] = _round(
            _first_after(
                (h.at for h in evidence.handled if h.number in after_kill), outage.killed_at
            )
        )
        figures["every_worker_resumed_s" + suffix] = _round(_every_worker(evidence, outage))
    for name, count in sorted(evidence.log_lines.items()):
        figures["log " + name] = count
    if evidence.notes:
        figures["notes"] = "; ".join(evidence.notes)

    if evidence.producer_error:
        problems.append(f"the producer failed: {evidence.producer_error}")
    elif evidence.published_at is None:
        problems.append(
            f"the run ended before the producer finished: {len(confirmed)} of "
            f"{evidence.messages} messages confirmed"
        )
    if lost:
        shown = ", ".join(message_id(n) for n in lost[:20])
        more = f" and {len(lost) - 20} more" if len(lost) > 20 else ""
        dead = (
            f"; the workers dead-lettered {evidence.dead_lettered} message(s)"
            if evidence.dead_lettered
            else ""
        )
        problems.append(f"{len(lost)} confirmed message(s) never handled: {shown}{more}{dead}")
        if evidence.left_on_broker is not None:
            problems.append(_where_lost(lost, evidence.left_on_broker, evidence.dead_lettered))
        if evidence.read_raw is not None:
            found = [
                f"{message_id(n)} at {', '.join(evidence.read_raw[n])}"
                for n in lost
                if n in evidence.read_raw
            ]
            missing = [message_id(n) for n in lost if n not in evidence.read_raw]
            problems.append(
                f"read without abe (aiokafka, every partition from its start): "
                f"{len(found)} of the lost found ({'; '.join(found) or 'none'}), "
                f"{len(missing)} not returned by the broker ({', '.join(missing) or 'none'})"
            )
    if twice_placed:
        shown = "; ".join(
            f"{' and '.join(message_id(n) for n in numbers)} at partition {p} offset {o}"
            for p, o, numbers in twice_placed[:10]
        )
        problems.append(
            f"the broker confirmed {len(twice_placed)} offset(s) for two different messages, "
            f"and a consumer reads one record per offset: {shown}"
        )
    for index, count in sorted(per_kill.items()):
        if count > allowed[index]:
            kill = evidence.kills[index]
            more = allowed[index] - window
            problems.append(
                f"kill #{index + 1} (worker pid {kill.pid} at {kill.at - start:.1f}s) led to "
                f"{count} duplicates; a worker holds at most {window} (prefetch + concurrency)"
                + (f" and had {more} handled since its last completed commit" if more else "")
            )
    for index, count in sorted(per_outage.items()):
        if count > window * evidence.workers:
            problems.append(
                f"broker restart #{index + 1} led to {count} duplicates; at most "
                f"{window * evidence.workers} ({evidence.workers} workers x {window}) were held"
            )
    twice = len(published_twice(evidence))
    budget = sum(allowed) + window * evidence.workers * len(evidence.outages) + twice
    if len(duplicates) > budget:
        commits = ", plus what each had handled since its last commit" if evidence.commits else ""
        problems.append(
            f"{len(duplicates)} duplicates ({dict(reasons)}) exceed what the crashes explain: "
            f"{budget} ({window} per kill{commits}, {window} per worker per broker restart, "
            f"one per message published twice)"
        )
    if pause > evidence.stall_after:
        problems.append(
            f"stall: no new message handled for {pause:.1f}s (from {pause_began - start:.1f}s "
            f"into the run) while confirmed messages waited; the limit is "
            f"{evidence.stall_after:.0f}s"
        )
    if evidence.stall_report:
        problems.append(evidence.stall_report)
    problems.extend(evidence.worker_failures)
    return Verdict(evidence.broker, figures, problems, duplicates)


def _where_lost(lost: list[int], left: list[dict[str, object]], dead_lettered: int) -> str:
    """Where the lost messages are: still on the key, on the dead-letter key, or gone.

    Gone is said only when the key was read to its end, and the dead-letter key too (or
    it gave nothing and the workers dead-lettered nothing); else what is unknown is said.
    """
    messages = [r for r in left if "n" in r]
    ends = {str(r["key"]): r for r in left if "complete" in r}
    on_key = sorted({int(str(r["n"])) for r in messages if r["key"] == "key"} & set(lost))
    letters = {int(str(r["n"])): r for r in messages if r["key"] == "dead-letter"}
    dead = [n for n in lost if n in letters]
    gone = [n for n in lost if n not in letters and n not in set(on_key)]
    parts = []
    if on_key:
        parts.append(
            f"{len(on_key)} still on the key, which a new group reads ({_ids(on_key)}): the "
            f"broker kept them and the workers' group never got them"
        )
    for n in dead[:5]:
        letter = letters[n]
        parts.append(
            f"{message_id(n)} on the dead-letter key after {letter.get('attempts')} "
            f"attempt(s): {letter.get('error')}"
        )
    if len(dead) > 5:
        parts.append(f"{len(dead) - 5} more on the dead-letter key")
    key, dlq = ends.get("key", {}), ends.get("dead-letter", {})
    dlq_done = bool(dlq.get("complete")) or (dlq.get("read") == 0 and not dead_lettered)
    if gone and key.get("complete") and dlq_done:
        parts.append(
            f"{len(gone)} on neither key, read to its end by a new group ({key.get('read')} "
            f"message(s) on the key): gone from the broker ({_ids(gone)})"
        )
    elif gone:
        parts.append(
            f"{len(gone)} not found, but the key was not read to its end (a new group read "
            f"{key.get('read', 0)} message(s) from it and {dlq.get('read', 0)} from the "
            f"dead-letter key before it stopped): unknown ({_ids(gone)})"
        )
    return "where the lost messages are: " + "; ".join(parts)


def _ids(numbers: list[int]) -> str:
    more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
    return ", ".join(message_id(n) for n in numbers[:10]) + more


def _all_handled_at(evidence: Evidence, confirmed: set[int]) -> float | None:
    """When the last confirmed message was handled for the first time (None: some never were)."""
    first: dict[int, float] = {}
    for handled in evidence.handled:
        if handled.number in confirmed:
            first[handled.number] = min(first.get(handled.number, handled.at), handled.at)
    if len(first) < len(confirmed) or not first:
        return None
    return max(first.values())
