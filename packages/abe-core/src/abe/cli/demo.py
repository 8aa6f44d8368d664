"""`abe demo`: abe's main job, shown on whatever backend `load_backend()` gives.

A producer publishes a stream of orders to a key of this run's own; three workers
(`AsyncLoopConsumer`s, each on its own backend, sharing the group "fulfilment") pack
them; one poisoned order fails, is retried with backoff and lands on the dead-letter
key, where a reader shows it with abe's headers. Every event is printed as it happens,
then a summary and a verdict; the run's keys are deleted at the end. Nothing here is
specific to a broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.codec import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_ORIGINAL_KEY,
)
from abe.backends.message_queue.base.keys import dead_letter_key
from abe.backends.message_queue.consumer import AsyncLoopConsumer, current_delivery
from abe.cli.arguments import positive_seconds
from abe.cli.connect import (
    FALLBACK_NOTE,
    LoadedBackend,
    close_backend,
    delete_own_keys,
    load,
    origin_of,
    require_base,
)
from abe.cli.errors import EXIT_FAILURE, EXIT_OK
from abe.types import MessageQueuePayload

__all__ = ["InvalidOrder", "add_parser", "make_orders", "problem_with", "run", "run_demo"]

GROUP = "fulfilment"
WORKERS = 3
CONCURRENCY = 2
MAX_ATTEMPTS = 3
RETRY_DELAY = 0.2
PUBLISH_PACE = 0.003
"""Seconds between two orders: a stream, not a burst."""

_CUSTOMERS = (
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Margaret Hamilton",
    "Ken Thompson",
)
_CATALOGUE = (
    ("KB-101", 89.00),
    ("MS-220", 24.50),
    ("MN-270", 219.00),
    ("HD-512", 64.90),
    ("CB-003", 7.99),
    ("DK-900", 149.00),
    ("LP-014", 12.40),
    ("SP-330", 39.95),
)


class InvalidOrder(ValueError):
    """An order the workers cannot pack."""


def make_orders(count: int) -> tuple[list[MessageQueuePayload], int]:
    """`count` orders (the same on every run) and the id of the one with a negative quantity."""
    rng = random.Random(1001)
    poisoned = 1001 + count // 3
    orders = []
    for order_id in range(1001, 1001 + count):
        items: list[dict[str, Any]] = [
            {"sku": sku, "qty": rng.randint(1, 3), "price": price}
            for sku, price in rng.sample(_CATALOGUE, rng.randint(1, 4))
        ]
        if order_id == poisoned:
            items[0]["qty"] = -2
        total = round(sum(item["qty"] * item["price"] for item in items), 2)
        orders.append(
            {
                "order_id": order_id,
                "customer": rng.choice(_CUSTOMERS),
                "items": items,
                "total": total,
            }
        )
    return orders, poisoned


def problem_with(order: Mapping[str, Any]) -> str | None:
    """Why the order cannot be packed, or None when it can."""
    for item in order.get("items", []):
        quantity = item.get("qty")
        if not isinstance(quantity, int) or quantity < 1:
            return f"item {item.get('sku')} has quantity {quantity}"
    return None


class _Story:
    """Prints each event with the time since the start, and keeps what the verdict needs."""

    def __init__(self, order_ids: set[int], *, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.perf_counter()  # reset by start()
        self.order_ids = order_ids
        self.packed_by: dict[int, list[str]] = {}
        self.dead_letters: dict[int, Mapping[str, str]] = {}
        self.finished_at: float | None = None
        self.all_settled = asyncio.Event()

    def start(self) -> None:
        """Count the time from now."""
        self.started = time.perf_counter()

    def say(self, who: str, text: str) -> None:
        if not self.quiet:
            print(f"{time.perf_counter() - self.started:7.3f}s  {who:<9} {text}", flush=True)

    def packed(self, worker: str, order: Mapping[str, Any]) -> None:
        count = len(order["items"])
        self.say(
            worker,
            f"packed order {order['order_id']} for {order['customer']}: "
            f"{count} item{'s' if count > 1 else ''}, {order['total']:.2f}",
        )
        self.packed_by.setdefault(order["order_id"], []).append(worker)
        self._settled()

    def dead_letter(self, order: Mapping[str, Any], key: str, headers: Mapping[str, str]) -> None:
        shown = ", ".join(
            f"{name}={headers.get(name)!r}"
            for name in (HEADER_ERROR, HEADER_ATTEMPTS, HEADER_ORIGINAL_KEY)
        )
        self.say("dlq", f"order {order.get('order_id')} on {key}: {shown}")
        self.dead_letters[order.get("order_id", -1)] = dict(headers)
        self._settled()

    def _settled(self) -> None:
        if self.order_ids <= set(self.packed_by) | set(self.dead_letters):
            if self.finished_at is None:
                self.finished_at = time.perf_counter()
            self.all_settled.set()


class _Worker(AsyncLoopConsumer):
    """A consumer whose handler packs orders, and which says when it schedules a retry."""

    def __init__(self, label: str, backend: BaseBackend, key: str, story: _Story) -> None:
        super().__init__(
            backend,
            GROUP,
            keys=[key],
            concurrency=CONCURRENCY,
            max_attempts=MAX_ATTEMPTS,
            retry_delay=RETRY_DELAY,
            shutdown_timeout=5.0,
        )
        self.label = label
        self._story = story

    async def handle(self, order: MessageQueuePayload) -> None:
        """Pack one order (a few ms of pretend work), or raise InvalidOrder."""
        await asyncio.sleep(0.002 + 0.001 * len(order.get("items", [])))
        problem = problem_with(order)
        if problem is None:
            self._story.packed(self.label, order)
            return
        attempt = current_delivery().attempt
        if attempt >= self.max_attempts:
            self._story.say(
                self.label,
                f"order {order['order_id']} failed on attempt {attempt}/{self.max_attempts} "
                f"({problem}); giving up: to the dead-letter key",
            )
        raise InvalidOrder(f"order {order['order_id']}: {problem}")

    def retry_delay_for(self, attempt: int) -> float:
        """The backoff the consumer chose, said as it is chosen."""
        delay = super().retry_delay_for(attempt)
        order = current_delivery().payload
        self._story.say(
            self.label,
            f"order {order['order_id']} failed on attempt {attempt}/{self.max_attempts} "
            f"({problem_with(order)}); retrying in {delay:.2f} s",
        )
        return delay


async def run_demo(order_count: int, *, quiet: bool, timeout: float) -> bool:
    """Run the demo on the configured backend; True when the verdict is OK."""
    key = f"abe-demo-orders-{secrets.token_hex(4)}"
    orders, poisoned = make_orders(order_count)
    story = _Story({order["order_id"] for order in orders}, quiet=quiet)
    loaded: list[LoadedBackend] = []
    try:
        for _ in range(WORKERS + 1):  # a producer and each worker on a backend of its own
            loaded.append(load())
        backends = [require_base(each.backend, "demo") for each in loaded]
        producer_backend, worker_backends = backends[0], backends[1:]
        _introduce(producer_backend, any(each.fallback for each in loaded), key, order_count)
        workers = [
            _Worker(f"worker-{number}", backend, key, story)
            for number, backend in enumerate(worker_backends, start=1)
        ]
        settled = await _run(
            producer_backend, workers=workers, key=key, orders=orders, story=story, timeout=timeout
        )
    finally:
        for each in loaded[1:]:
            await close_backend(each.backend)
        if loaded:  # the producer's backend deletes the run's keys once the workers are gone
            producer = loaded[0].backend
            if isinstance(producer, BaseBackend):
                await delete_own_keys(producer, [key])
            await close_backend(producer)
    return _summarise(
        story, workers=workers, orders=orders, poisoned=poisoned, settled=settled, timeout=timeout
    )


def _introduce(backend: BaseBackend, fallback: bool, key: str, order_count: int) -> None:
    if fallback:
        print(FALLBACK_NOTE)
    else:
        distribution, version = origin_of(backend.name)
        origin = f"{distribution} {version}" if distribution else "unknown distribution"
        print(f"backend: {backend.name} ({origin}) {backend!r}")
    print(
        f"key: {key}; group {GROUP!r}: {WORKERS} workers x concurrency {CONCURRENCY}, "
        f"at most {MAX_ATTEMPTS} attempts, retry delay from {RETRY_DELAY:g} s doubling",
        flush=True,
    )


async def _run(
    producer_backend: BaseBackend,
    *,
    workers: list[_Worker],
    key: str,
    orders: list[MessageQueuePayload],
    story: _Story,
    timeout: float,
) -> bool:
    """Start everything, wait until every order is packed or dead-lettered (or the timeout)."""
    loop = asyncio.get_running_loop()
    letters = producer_backend.subscribe(group="abe-demo-dlq", keys=[dead_letter_key(key)])

    async def read_dead_letters() -> None:
        async with letters:
            async for delivery in letters:
                story.dead_letter(delivery.payload, delivery.key, delivery.headers)
                await delivery.ack()

    async def produce() -> None:
        story.say("producer", f"publishing {len(orders)} orders to {key}")
        for order in orders:
            await producer_backend.publish(key, order)
            await asyncio.sleep(PUBLISH_PACE)
        story.say("producer", f"published {len(orders)} orders")

    story.start()
    settled = loop.create_task(story.all_settled.wait())
    tasks = [loop.create_task(worker.run(worker.handle)) for worker in workers]
    tasks += [loop.create_task(read_dead_letters()), loop.create_task(produce())]
    try:
        await _wait_for_settled(settled, tasks, timeout)
    finally:
        await asyncio.gather(*(worker.shutdown() for worker in workers))
        await letters.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        settled.cancel()
    return story.all_settled.is_set()


async def _wait_for_settled(
    settled: asyncio.Task[Any], tasks: list[asyncio.Task[None]], timeout: float
) -> None:
    """Return when `settled` is done or `timeout` passes; raise what a task failed with."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    watched: set[asyncio.Task[Any]] = {settled, *tasks}
    while not settled.done() and loop.time() < deadline:
        finished, _ = await asyncio.wait(
            watched, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
        )
        for task in finished - {settled}:
            watched.discard(task)
            task.result()  # a worker, the reader or the producer failed: say why


def _summarise(
    story: _Story,
    *,
    workers: list[_Worker],
    orders: list[MessageQueuePayload],
    poisoned: int,
    settled: bool,
    timeout: float,
) -> bool:
    good = {order["order_id"] for order in orders} - {poisoned}
    packed = set(story.packed_by)
    dead = set(story.dead_letters)
    processed = sum(worker.stats.processed for worker in workers)
    retries = sum(worker.stats.retried for worker in workers)
    ended = story.finished_at or time.perf_counter()
    duration = ended - story.started
    per_worker = ", ".join(f"{worker.label}: {worker.stats.processed}" for worker in workers)
    duplicates = processed - len(packed)
    print()
    print("Summary")
    print(f"  published       {len(orders)} orders (1 poisoned: order {poisoned})")
    print(f"  processed       {processed} ({per_worker})")
    if duplicates > 0:
        print(f"  duplicates      {duplicates} (at-least-once delivery)")
    print(f"  retries         {retries}")
    dead_list = _orders(sorted(dead))
    print(f"  dead-lettered   {len(dead)} ({dead_list})")
    print(
        f"  duration        {duration:.2f} s, from the first publish to the last order settled "
        f"(mostly the poisoned order's retry delays; not a throughput: see abe bench)"
    )
    missing = sorted(good - packed)
    if not missing and dead == {poisoned}:
        print(
            f"OK: all {len(good)} good orders were packed and only the poisoned order "
            f"{poisoned} was dead-lettered, after {MAX_ATTEMPTS} attempts",
            flush=True,
        )
        return True
    problems = []
    if missing:
        problems.append(f"{len(missing)} good order(s) not packed: {_orders(missing)}")
    if dead != {poisoned}:
        problems.append(f"dead-lettered: {dead_list}, expected only order {poisoned}")
    if not settled:
        problems.append(f"gave up after {timeout:g} s")
    print(f"FAILED: {'; '.join(problems)}", flush=True)
    return False


def _orders(order_ids: list[int]) -> str:
    """ "order 1003", "orders 1002, 1003" or "none", at most ten shown."""
    if not order_ids:
        return "none"
    shown = ", ".join(str(order_id) for order_id in order_ids[:10])
    more = f" and {len(order_ids) - 10} more" if len(order_ids) > 10 else ""
    return f"order{'s' if len(order_ids) > 1 else ''} {shown}{more}"


@contextlib.contextmanager
def _quiet_logger(name: str, *, enabled: bool) -> Iterator[None]:
    """Hold back a logger's records: the demo narrates the same events itself."""
    logger = logging.getLogger(name)
    saved = logger.level
    if enabled:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(saved)


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `abe demo`."""
    parser = commands.add_parser(
        "demo",
        help="watch a producer, three workers, retries and a dead letter",
        description=(
            "Publish a stream of orders to a new key, process them with three workers in "
            "one group, retry the one poisoned order with backoff until it is dead-lettered, "
            "and read it from the dead-letter key. Runs on the configured backend (the "
            "memory backend when none is installed). Exit 0 when every good order was "
            "processed and only the poisoned one was dead-lettered."
        ),
    )
    parser.add_argument(
        "--orders",
        type=_order_count,
        default=40,
        metavar="N",
        help="how many orders to publish, one of them poisoned (default 40)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only the summary and the verdict"
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="give up when the orders are not all settled after this long (default 60)",
    )
    return parser


def _order_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 2 <= value <= 100_000:
        raise argparse.ArgumentTypeError(
            f"must be from 2 to 100000 (one order is poisoned), got {text!r}"
        )
    return value


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 on an OK verdict, else 1."""
    with _quiet_logger("abe.consumer", enabled=not args.debug):
        passed = asyncio.run(run_demo(args.orders, quiet=args.quiet, timeout=args.timeout))
    return EXIT_OK if passed else EXIT_FAILURE
