"""moto's server, with S3's conditional writes made atomic as they are on S3, and two of
its answers remembered instead of worked out on every request: the service for a host,
and the printed text of a stored timestamp.

    python atomic_moto.py -H 127.0.0.1 -p PORT    (moto.server's arguments)

moto answers each request in a thread of its own, and its PutObject checks ``If-None-Match``
and ``If-Match`` and then stores the object without a lock: two conditional PUTs of one
key that arrive together can both pass the check and both succeed. Tansu allocates a
partition's offsets with such a write (compare-and-swap on ``watermark.json``), so under
that race two produce requests get the same offset, and a record stored in an overlapping
batch is skipped by every consumer (docs/faults.md). Here PutObject runs under one lock:
its check and its write are one step, the guarantee real S3 gives.

moto's server also works out which service a request is for by listing its own package
directory and trying some hundreds of URL patterns, for every request, under one lock.
Three Tansu brokers on one bucket make many small requests: that was 40% of moto's CPU,
and moto then answered the group coordinator's writes so late that Tansu dropped members
whose heartbeats had been sent in time (a two-second session). The answer depends on the
host alone, so it is remembered per host. Listing a partition's records (Tansu does on
every fetch) then spent a third of its time parsing each object's timestamp back from the
text moto keeps, with dateutil, to print it again: the text printed is remembered too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from moto.core.serialize import TimestampSerializer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.s3.responses import S3Response
from moto.server import main

__all__ = ["make_put_object_atomic", "remember_backends_by_host", "remember_timestamps"]

_REMEMBERED_TIMESTAMPS = 100_000  # forgotten all at once past this many (each a short text)

_PUTS = threading.Lock()


def _wrap_method(owner: type, name: str, wrap: Callable[[Any], Callable[..., Any]]) -> None:
    """Replace ``owner.name`` by ``wrap(original)``, once: a second call leaves it as it is."""
    original = getattr(owner, name)
    if getattr(original, "wrapped_for_tests", False):
        return
    replacement = wrap(original)
    replacement.wrapped_for_tests = True  # type: ignore[attr-defined]
    setattr(owner, name, replacement)


def make_put_object_atomic() -> None:
    """Serialise moto's S3 PutObject (in this process), so its preconditions hold."""

    def atomic(put_object: Callable[[S3Response], Any]) -> Callable[[S3Response], Any]:
        def atomic_put_object(self: S3Response) -> Any:
            with _PUTS:
                return put_object(self)

        return atomic_put_object

    _wrap_method(S3Response, "put_object", atomic)


def remember_backends_by_host() -> None:
    """Make moto's server find the service for a host once, and answer from memory after."""
    found: dict[str | None, Any] = {}

    def remembering(find: Callable[..., Any]) -> Callable[..., Any]:
        def get_backend_for_host(self: DomainDispatcherApplication, host: str | None) -> Any:
            if host not in found:  # (moto calls this under its own lock)
                found[host] = find(self, host)
            return found[host]

        return get_backend_for_host

    _wrap_method(DomainDispatcherApplication, "get_backend_for_host", remembering)


def remember_timestamps() -> None:
    """Make moto's serializer convert each stored timestamp text once, not on every listing."""
    converted: dict[tuple[object, str], Any] = {}

    def remembering(convert: Callable[..., Any]) -> Callable[..., Any]:
        def convert_timestamp(self: TimestampSerializer, value: Any, form: str) -> Any:
            if not isinstance(value, (str, int, float)):  # a datetime: converted as moto does
                return convert(self, value, form)
            if (text := converted.get((value, form))) is None:
                if len(converted) >= _REMEMBERED_TIMESTAMPS:
                    converted.clear()
                text = converted[(value, form)] = convert(self, value, form)
            return text

        return convert_timestamp

    _wrap_method(TimestampSerializer, "_convert_timestamp_to_str", remembering)


if __name__ == "__main__":
    make_put_object_atomic()
    remember_backends_by_host()
    remember_timestamps()
    main()
