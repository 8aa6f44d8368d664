"""The one fault of the emulated Kafka that a test may run again for, named by its signs.

Tansu 0.6 over moto's S3 sometimes confirms two produce requests to one partition at the
same offset, when they come together (its first writes, dead letters and copies from
several processes, or three brokers on one bucket): a record stored in the overlapping
batch is then never read by anyone, and the request that lost the race fails with
Kafka's UnknownError. moto with atomic PutObject (atomic_moto.py) made it rarer, not
gone; docs/faults.md has the evidence. abe cannot tell it from a lost message, and a
Kafka broker never does it, so a Kafka-on-Tansu test runs again, at most twice, when
its failure shows one of these signs, and fails like any other test otherwise.

"received N of M messages" is not a sign: it can hide an abe bug (as a poison body given
back on stop, fixed in abe-core), and with PutObject atomic no confirmed record was lost.
"""

from __future__ import annotations

import pytest

__all__ = ["TANSU_FAULT_SIGNS", "rerun_on_tansu_fault"]

TANSU_FAULT_SIGNS = [
    "for two different messages",  # the crash verdict: one offset confirmed for two messages
    "UnknownError",  # the losing produce request, as aiokafka reports Tansu's AlreadyExists
]

rerun_on_tansu_fault = pytest.mark.flaky(reruns=2, only_rerun=TANSU_FAULT_SIGNS)
"""Mark a test on Tansu over moto's S3 to run again (twice at most) on that fault alone."""
