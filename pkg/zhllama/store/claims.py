"""Create-if-absent on an object store that has no conditional writes (rclone's S3 server ignores If-None-Match).

Plain PUT, LIST and DELETE are enough when listings are consistent (S3 has been since 2020; rclone over a
directory always is). It is Lamport's bakery, used once: every caller takes a numbered ticket one above any it
sees, the smallest (number, uuid) wins. What makes a late caller unable to undercut an early one is the
"choosing" flag each caller holds while it reads the tickets and takes its own: a caller decides only once
everyone it saw choosing has finished. Anyone who starts choosing after that sees its ticket, and draws a larger
number. Tickets are kept (a late caller must still see the winner's), beside the key in `.<name>.claims/`, and
go when the key's directory is deleted.
"""

from __future__ import annotations

import time
import uuid
from typing import Protocol

from zhllama.store.base import join_key

STALE_CHOOSING_S = 30.0
"""A choosing flag older than this (by the clock of the caller that set it, so hosts' clocks must agree within
it) belongs to a caller that died mid-claim: it no longer holds anyone up."""
POLL_S = 0.05


class PlainObjects(Protocol):
    def exists(self, key: str) -> bool: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_keys(self, keys: list[str]) -> None: ...


def claims_prefix(key: str) -> str:
    parent, _, name = key.rpartition("/")
    return join_key(parent, f".{name}.claims")


def create_by_tickets(store: PlainObjects, key: str, data: bytes) -> bool:
    """Write `key` unless it exists; True for exactly one of any number of concurrent callers."""
    if store.exists(key):
        return False
    me, prefix = uuid.uuid4().hex, claims_prefix(key)
    choosing = join_key(prefix, "choosing", f"{time.time_ns() // 1_000_000:013d}-{me}")
    store.write_bytes(choosing, b"")
    try:
        number = 1 + max((_ticket(k)[0] for k in store.list_keys(join_key(prefix, "tickets"))), default=0)
        store.write_bytes(join_key(prefix, "tickets", f"{number:010d}-{me}"), b"")
    finally:
        store.delete_keys([choosing])
    _wait_for_choosers(store, join_key(prefix, "choosing"))
    tickets = sorted(_ticket(k) for k in store.list_keys(join_key(prefix, "tickets")))
    if tickets[0] != (number, me):
        return False
    store.write_bytes(key, data)
    return True


def _wait_for_choosers(store: PlainObjects, prefix: str) -> None:
    """Until every caller choosing now has taken its ticket (or is so old it must have died)."""
    waiting = set(store.list_keys(prefix))
    while waiting:
        now_ms = time.time_ns() // 1_000_000
        waiting = {k for k in waiting if now_ms - _started_ms(k) < STALE_CHOOSING_S * 1000}
        if waiting:
            time.sleep(POLL_S)
            waiting &= set(store.list_keys(prefix))


def _ticket(key: str) -> tuple[int, str]:
    number, _, owner = key.rsplit("/", 1)[-1].partition("-")
    return (int(number), owner) if number.isdigit() else (0, owner)


def _started_ms(key: str) -> int:
    stamp = key.rsplit("/", 1)[-1].partition("-")[0]
    return int(stamp) if stamp.isdigit() else 0
