"""The notify map: NOTIFY value -> eventfd, read without locks (docs/abi.md §9.4).

The vCPU thread looks up every LHCALL_NOTIFY; device set-up adds entries
from other threads. Like lguest's RCU-protected array, the map is an
immutable snapshot: an adder builds a new one, publishes it with a single
reference swap, then waits for a *grace period* — until no reader can still
be using the old snapshot — before it returns. Readers never lock; they keep
whichever snapshot they started with.

A reader announces itself in its own slot (one per reader thread) with the
generation it is reading; ``synchronize`` waits until no slot shows an older
generation. Tests observe the grace period through ``grace_periods`` and by
holding a read open while an adder waits.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from types import MappingProxyType
from typing import Iterator, Mapping

IDLE = -1


class NotifyMap:
    def __init__(self) -> None:
        self._snapshot: Mapping[int, int] = MappingProxyType({})
        self._generation = 0
        self._writer = threading.Lock()
        self._slots: dict[int, int] = {}      # reader thread id -> generation or IDLE
        self.grace_periods = 0

    # -- readers (lock-free) -------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[Mapping[int, int]]:
        me = threading.get_ident()
        self._slots[me] = self._generation      # announce before taking the snapshot
        try:
            yield self._snapshot
        finally:
            self._slots[me] = IDLE

    def signal(self, value: int) -> bool:
        """If ``value`` is registered, add 1 to its eventfd and say so."""
        with self.reading() as snapshot:
            fd = snapshot.get(value)
        if fd is None:
            return False
        os.eventfd_write(fd, 1)
        return True

    # -- writers -----------------------------------------------------------------
    def add(self, value: int, fd: int) -> None:
        if value == 0:
            raise ValueError("notify value 0 cannot be registered")
        with self._writer:
            new = dict(self._snapshot)
            new[value] = fd
            old_generation = self._generation
            self._snapshot = MappingProxyType(new)      # publish: one reference swap
            self._generation = old_generation + 1
            self.synchronize(old_generation)

    def remove(self, value: int) -> None:
        with self._writer:
            new = dict(self._snapshot)
            new.pop(value, None)
            old_generation = self._generation
            self._snapshot = MappingProxyType(new)
            self._generation = old_generation + 1
            self.synchronize(old_generation)

    def synchronize(self, old_generation: int, poll: float = 0.0005) -> None:
        """Wait until no reader can still hold a snapshot of ``old_generation``
        or earlier (readers are short: one dict lookup)."""
        while any(g != IDLE and g <= old_generation for g in list(self._slots.values())):
            time.sleep(poll)
        self.grace_periods += 1

    def snapshot(self) -> Mapping[int, int]:
        return self._snapshot
