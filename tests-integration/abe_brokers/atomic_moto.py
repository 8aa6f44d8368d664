"""moto's server, with S3's conditional writes made atomic as they are on S3.

    python atomic_moto.py -H 127.0.0.1 -p PORT    (moto.server's arguments)

moto answers each request in a thread of its own, and its PutObject checks ``If-None-Match``
and ``If-Match`` and then stores the object without a lock: two conditional PUTs of one
key that arrive together can both pass the check and both succeed. Tansu allocates a
partition's offsets with such a write (compare-and-swap on ``watermark.json``), so under
that race two produce requests get the same offset, and a record stored in an overlapping
batch is skipped by every consumer (docs/faults.md). Here PutObject runs under one lock:
its check and its write are one step, the guarantee real S3 gives.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.s3.responses import S3Response
from moto.server import main

__all__ = ["make_put_object_atomic"]

_PUTS = threading.Lock()


def make_put_object_atomic() -> None:
    """Serialise moto's S3 PutObject (in this process), so its preconditions hold."""
    put_object = S3Response.put_object
    if getattr(put_object, "atomic", False):
        return

    def atomic_put_object(self: S3Response) -> Any:
        with _PUTS:
            return put_object(self)

    atomic_put_object.atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = atomic_put_object  # type: ignore[method-assign]


if __name__ == "__main__":
    make_put_object_atomic()
    main()
