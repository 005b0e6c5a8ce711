"""The async hypercall ring (docs/abi.md §5).

In lazy sections (page-table batches, context switches) the guest queues
hypercalls in lguest_data instead of trapping for each: 64 entries, each a
status byte (0xFF free, 0 queued) and the argument words (five from Linux
2.6.31 on, four before, in an order generations.RingEntry gives). The Host drains
the ring at the start of every synchronous hypercall, from a cursor that
persists across drains, executing each entry exactly as if it had been a
synchronous call.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import GuestFault
from . import hypercalls as H
from .lguest_data import LHCALL_RING_SIZE

if TYPE_CHECKING:
    from .core import Host

STATUS_FREE = 0xFF


class AsyncRing:
    def __init__(self, host: "Host") -> None:
        self.host = host
        self.cursor = 0            # never reset (docs/abi.md §5)
        self.executed = 0

    def drain(self) -> None:
        # The common case, on every hypercall: nothing queued. lguest_data's
        # bounds were checked at INIT, so one byte read tells.
        if self.view[self.status_at + self.cursor] == STATUS_FREE:
            return
        self.drain_queued()

    def attach(self) -> None:
        """At LGUEST_INIT: where the status bytes are, for drain's test."""
        data = self.host.lguest_data
        self.status_at = data.gpa + data.layout.hcall_status
        self.host.memory.check(self.status_at, LHCALL_RING_SIZE, "async ring status")
        self.view = self.host.memory.view

    def drain_queued(self) -> None:
        host = self.host
        data = host.lguest_data
        memory = host.memory
        status_at = self.status_at
        args_at = data.gpa + data.layout.hcalls
        entry = host.generation.ring
        pad = (0,) * (4 - len(entry.args))
        # Only what was queued when we started: the guest may keep queueing.
        snapshot = memory.read(status_at, LHCALL_RING_SIZE, "async hypercall status")
        for _ in range(LHCALL_RING_SIZE):
            n = self.cursor
            if snapshot[n] == STATUS_FREE:
                break
            self.cursor = (n + 1) % LHCALL_RING_SIZE
            at = args_at + n * entry.size
            call = memory.u32(at)
            if call == H.LHCALL_LGUEST_INIT:
                raise GuestFault("LGUEST_INIT queued in the async hypercall ring")
            host.dispatch(call, *(memory.u32(at + off) for off in entry.args), *pad)
            memory.set_u8(status_at + n, STATUS_FREE)
            self.executed += 1
