"""The crash test's own rules, checked without a broker: each failure it must catch, it does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from abe_crash.records import Confirmed, Handled, LineWriter, Tail
from abe_crash.sizes import Sizes
from abe_crash.verdict import Commit, Evidence, Kill, Outage, Placed, judge

WORKER_A, WORKER_B = 101, 202


def evidence(count: int, handled: list[Handled], **changes: Any) -> Evidence:
    """A run of `count` messages, confirmed one a second from t=0, that ended at t=100."""
    values: dict[str, Any] = {
        "broker": "test",
        "messages": count,
        "confirmed": [Confirmed(n, 1, float(n), float(n)) for n in range(count)],
        "handled": handled,
        "kills": [],
        "outages": [],
        "workers": 2,
        "window": 4,
        "stall_after": 10.0,
        "started_at": 0.0,
        "published_at": float(count),
        "ended_at": 100.0,
    }
    values.update(changes)
    return Evidence(**values)


def each_once(count: int, pid: int = WORKER_A, delay: float = 0.5) -> list[Handled]:
    return [Handled(n, pid, 1, n + delay) for n in range(count)]


def test_every_message_handled_once_passes() -> None:
    verdict = judge(evidence(5, each_once(5)))
    assert verdict.ok, verdict.problems
    assert (verdict.figures["lost"], verdict.figures["duplicates"]) == (0, 0)


def test_a_confirmed_message_never_handled_is_lost() -> None:
    verdict = judge(evidence(5, [h for h in each_once(5) if h.number != 3], dead_lettered=1))
    assert verdict.figures["lost"] == 1
    assert any("never handled: m-3" in p and "dead-lettered 1" in p for p in verdict.problems)


def test_a_message_handled_but_never_confirmed_is_not_lost() -> None:
    handled = [*each_once(5), Handled(7, WORKER_A, 1, 6.0)]
    verdict = judge(evidence(5, handled))
    assert verdict.ok
    assert verdict.figures["handled_unconfirmed"] == 1


def test_a_killed_workers_duplicates_are_explained_and_bounded() -> None:
    again = [Handled(n, WORKER_B, 2, 20.0 + n) for n in range(4)]
    verdict = judge(evidence(5, each_once(5) + again, kills=[Kill(10.0, WORKER_A)]))
    assert verdict.ok, verdict.problems
    assert verdict.figures["duplicates_killed_worker"] == 4
    assert verdict.figures["most_duplicates_per_kill"] == 4


def test_more_duplicates_than_a_worker_holds_fail() -> None:
    again = [Handled(n, WORKER_B, 2, 20.0 + n) for n in range(5)]
    verdict = judge(evidence(5, each_once(5) + again, kills=[Kill(10.0, WORKER_A)]))
    assert any("kill #1" in p and "5 duplicates" in p for p in verdict.problems)


def test_on_kafka_what_a_killed_worker_handled_since_its_last_commit_is_allowed() -> None:
    # messages 0..9 handled at 0.5..9.5; the last completed commit began at 6.0 (interval
    # 1.0): what was handled after 5.0 (m-5..m-9, 5 messages) no commit can have carried
    handled = each_once(10) + [Handled(n, WORKER_B, 2, 20.0 + n) for n in range(3, 10)]
    commits = {WORKER_A: [Commit(6.0, 6.5, 1.0), Commit(9.8, 12.0, 1.0)]}  # the last unfinished
    verdict = judge(evidence(10, handled, kills=[Kill(10.0, WORKER_A)], commits=commits))
    assert verdict.ok, verdict.problems  # 7 duplicates: window 4 + 5 uncommitted = 9
    assert verdict.figures["most_allowed_per_kill"] == 9


def test_on_kafka_duplicates_beyond_the_last_commit_still_fail() -> None:
    handled = each_once(10) + [Handled(n, WORKER_B, 2, 20.0 + n) for n in range(10)]
    commits = {WORKER_A: [Commit(8.0, 8.2, 0.6)]}  # carried all handled before 7.4
    verdict = judge(evidence(10, handled, kills=[Kill(10.0, WORKER_A)], commits=commits))
    assert verdict.figures["most_allowed_per_kill"] == 4 + 3  # m-7, m-8, m-9
    assert any("kill #1" in p and "10 duplicates" in p for p in verdict.problems)


def test_two_messages_confirmed_at_one_offset_fail() -> None:
    placed = [Placed(0, 4, 0), Placed(1, 4, 1), Placed(3, 4, 1), Placed(2, 5, 0)]
    verdict = judge(evidence(5, each_once(5), placed=placed))
    assert verdict.figures["offsets_confirmed_twice"] == 1
    assert any("m-1 and m-3 at partition 4 offset 1" in p for p in verdict.problems)


def test_whether_a_plain_consumer_read_the_lost_messages_is_said() -> None:
    handled = [h for h in each_once(5) if h.number not in (1, 3)]
    verdict = judge(evidence(5, handled, read_raw={0: ["2@0"], 1: ["4@1"], 2: ["0@0"]}))
    assert any(
        "1 of the lost found (m-1 at 4@1), 1 not returned by the broker (m-3)" in p
        for p in verdict.problems
    ), verdict.problems


def test_a_duplicate_before_the_kill_is_not_put_down_to_it() -> None:
    again = [Handled(0, WORKER_B, 2, 5.0)]  # handled again before worker A died
    verdict = judge(evidence(5, each_once(5) + again, kills=[Kill(10.0, WORKER_A)]))
    assert verdict.figures["duplicates_killed_worker"] == 0
    assert verdict.figures["duplicates_live_redelivery"] == 1


def test_duplicates_around_a_broker_restart_are_put_down_to_it() -> None:
    again = [Handled(n, WORKER_A, 2, 30.0) for n in range(3)]
    outage = Outage(killed_at=10.0, ready_at=12.0)
    verdict = judge(evidence(5, each_once(5) + again, outages=[outage]))
    assert verdict.figures["duplicates_broker_restart"] == 3


def test_live_redeliveries_beyond_what_the_crashes_explain_fail() -> None:
    again = [Handled(n, WORKER_B, 2, 20.0 + n) for n in range(5)]  # nobody was killed
    verdict = judge(evidence(5, each_once(5) + again))
    assert verdict.figures["duplicates_live_redelivery"] == 5
    assert any("exceed what the crashes explain" in p for p in verdict.problems)


def test_a_retried_publish_explains_a_second_copy() -> None:
    confirmed = [Confirmed(n, 2 if n == 1 else 1, float(n), float(n)) for n in range(3)]
    handled = [*each_once(3), Handled(1, WORKER_B, 1, 9.0)]
    verdict = judge(evidence(3, handled, confirmed=confirmed, kills=[Kill(50.0, WORKER_B)]))
    assert verdict.figures["duplicates_published_twice"] == 1


def test_a_publish_across_the_crash_explains_two_copies_handled_later() -> None:
    confirmed = [Confirmed(0, 1, 1.0, 0.5), Confirmed(1, 1, 12.5, 9.5)]  # m-1 spans the crash
    handled = [Handled(0, WORKER_A, 1, 2.0), Handled(1, WORKER_A, 1, 20.0)]
    handled.append(Handled(1, WORKER_A, 1, 20.001))  # the second copy, right behind it
    outage = Outage(killed_at=10.0, ready_at=12.0)
    verdict = judge(evidence(2, handled, confirmed=confirmed, outages=[outage]))
    assert verdict.ok, verdict.problems
    assert verdict.figures["duplicates_published_twice"] == 1
    assert verdict.figures["published_across_crash"] == 1


def test_messages_waiting_with_none_handled_too_long_is_a_stall() -> None:
    handled = [*each_once(2), Handled(2, WORKER_A, 1, 40.0)]  # m-2 waited from t=2 to 40
    verdict = judge(evidence(3, handled, ended_at=41.0))
    assert verdict.figures["longest_pause_s"] == pytest.approx(38.0)
    assert any(p.startswith("stall:") for p in verdict.problems)


def test_a_message_never_handled_stalls_until_the_end() -> None:
    verdict = judge(evidence(2, each_once(1), ended_at=50.0))
    assert verdict.figures["longest_pause_s"] == pytest.approx(49.0)
    assert any(p.startswith("stall:") for p in verdict.problems)


def test_idle_time_with_nothing_waiting_is_no_stall() -> None:
    confirmed = [Confirmed(0, 1, 0.0, 0.0), Confirmed(1, 1, 60.0, 60.0)]  # a quiet minute
    handled = [Handled(0, WORKER_A, 1, 0.5), Handled(1, WORKER_A, 1, 60.5)]
    verdict = judge(evidence(2, handled, confirmed=confirmed, ended_at=61.0))
    assert verdict.ok, verdict.problems


def test_time_to_resume_after_a_restart() -> None:
    confirmed = [Confirmed(0, 1, 1.0, 1.0), Confirmed(1, 3, 14.0, 9.0), Confirmed(2, 1, 15.0, 15.0)]
    handled = [Handled(0, WORKER_A, 1, 2.0), Handled(1, WORKER_A, 1, 13.0)]
    handled.append(Handled(2, WORKER_A, 1, 16.5))
    outage = Outage(killed_at=10.0, ready_at=12.0)
    verdict = judge(evidence(3, handled, confirmed=confirmed, outages=[outage]))
    figures = verdict.figures
    assert figures["broker_down_s"] == 2.0
    assert figures["publish_resumed_s"] == 2.0
    assert figures["consume_resumed_s"] == 1.0
    assert figures["new_messages_handled_s"] == 1.0  # m-1 was confirmed after the crash
    assert figures["publish_retried"] == 1


def test_the_producers_and_workers_failures_fail_the_run() -> None:
    verdict = judge(
        evidence(1, each_once(1), producer_error="exit code 3", worker_failures=["w2 hung"])
    )
    assert "the producer failed: exit code 3" in verdict.problems
    assert "w2 hung" in verdict.problems


def test_a_line_still_being_written_waits(tmp_path: Path) -> None:
    path = tmp_path / "lines"
    writer = LineWriter(path)
    tail = Tail(path)
    writer.write("1 1 1.0\n2 1")
    assert tail.new_lines() == ["1 1 1.0"]
    writer.write(" 2.0\n")
    assert tail.new_lines() == ["2 1 2.0"]
    writer.close()


def test_sizes_come_from_the_environment_and_bad_ones_are_named() -> None:
    sizes = Sizes.from_env({"ABE_CRASH_MESSAGES": "10000", "ABE_CRASH_HANDLER_SECONDS": "0"})
    assert (sizes.messages, sizes.handler_seconds) == (10000, 0.0)
    assert sizes.publish_duration == pytest.approx(10000 / 170)
    assert Sizes.from_env({}).publish_duration == 15.0
    with pytest.raises(ValueError, match="ABE_CRASH_WORKERS='x' is not a whole number"):
        Sizes.from_env({"ABE_CRASH_WORKERS": "x"})
    with pytest.raises(ValueError, match="ABE_CRASH_KILL_EVERY='0' must be more than 0"):
        Sizes.from_env({"ABE_CRASH_KILL_EVERY": "0"})


def test_where_each_lost_message_is_is_said() -> None:
    letter = {"key": "dead-letter", "n": 3, "error": "delivered 6 times", "attempts": "6"}
    kept = {"key": "key", "n": 1, "error": None, "attempts": None}
    handled = [h for h in each_once(5) if h.number not in (1, 2, 3)]
    done = [
        {"key": "key", "read": 2, "complete": True},
        {"key": "dead-letter", "read": 1, "complete": True},
    ]
    left = [letter, kept, *done]
    verdict = judge(evidence(5, handled, dead_lettered=1, left_on_broker=left))
    (where,) = [p for p in verdict.problems if p.startswith("where the lost")]
    assert "1 still on the key, which a new group reads (m-1)" in where
    assert "m-3 on the dead-letter key after 6 attempt(s): delivered 6 times" in where
    assert "1 on neither key, read to its end by a new group" in where
    assert "gone from the broker (m-2)" in where


@pytest.mark.parametrize(
    "ends",
    [
        [{"key": "dead-letter", "read": 0, "complete": False}],  # the key: not even begun
        [
            {"key": "dead-letter", "read": 0, "complete": False},
            {"key": "key", "read": 0, "complete": False},  # nothing came: no proof of empty
        ],
    ],
)
def test_a_message_not_found_by_an_unfinished_inspection_is_not_called_gone(
    ends: list[dict[str, object]],
) -> None:
    handled = [h for h in each_once(5) if h.number != 2]
    verdict = judge(evidence(5, handled, left_on_broker=ends))
    (where,) = [p for p in verdict.problems if p.startswith("where the lost")]
    assert "gone" not in where
    assert "1 not found, but the key was not read to its end" in where


def test_an_empty_dead_letter_key_is_no_proof_when_workers_dead_lettered() -> None:
    ends = [
        {"key": "dead-letter", "read": 0, "complete": False},
        {"key": "key", "read": 4, "complete": True},
    ]
    handled = [h for h in each_once(5) if h.number != 2]
    verdict = judge(evidence(5, handled, left_on_broker=ends, dead_lettered=1))
    (where,) = [p for p in verdict.problems if p.startswith("where the lost")]
    assert "gone" not in where


def test_a_run_that_ended_before_the_producer_finished_fails() -> None:
    verdict = judge(evidence(3, each_once(3), published_at=None, messages=10))
    assert "the run ended before the producer finished: 3 of 10 messages confirmed" in (
        verdict.problems
    )
