"""The split virtqueue in guest memory (docs/abi.md §9.2).

Layout at the ring's guest-physical base, for ``num`` entries:
descriptors (16 bytes each), then the avail ring {flags, idx, ring[num]},
then, at the next ``align`` boundary, the used ring {flags, idx,
{id, len}[num]}.

Everything the guest wrote is untrusted: a descriptor index past ``num``, a
chain longer than the ring (a loop), an indirect table that is misaligned,
nested or out of range, or a buffer outside guest memory raises
``GuestFault`` with a reason naming the queue.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import GuestFault, GuestMemoryError
from ..kvm import memory_barrier
from ..memory import GuestMemory

VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT = 1, 2, 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
DESC = struct.Struct("<QIHH")


def vring_size(num: int, align: int) -> int:
    used_at = (16 * num + 4 + 2 * num + 2 + align - 1) & ~(align - 1)
    return used_at + 4 + 8 * num + 2


def scatter(data: bytes, bufs: list[memoryview]) -> int:
    """Copy data across a chain's writable buffers in order; the bytes
    copied (fewer than len(data) when the buffers are too small)."""
    done = 0
    for b in bufs:
        take = min(len(b), len(data) - done)
        b[:take] = data[done:done + take]
        done += take
        if done == len(data):
            break
    return done


def split(bufs: list[memoryview], n: int) -> tuple[bytes | None, list[memoryview]]:
    """The first ``n`` bytes across ``bufs`` (None if they hold fewer), and
    views of the rest."""
    head = bytearray()
    rest: list[memoryview] = []
    for b in bufs:
        if len(head) < n:
            take = min(n - len(head), len(b))
            head += b[:take]
            if take < len(b):
                rest.append(b[take:])
        else:
            rest.append(b)
    return (bytes(head) if len(head) == n else None), rest


@dataclass
class Chain:
    """One request: the head index and its buffers, in order."""
    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def writable_len(self) -> int:
        return sum(len(b) for b in self.writable)

    def read_all(self) -> bytes:
        return b"".join(bytes(b) for b in self.readable)


class Vring:
    """A legacy ring laid out from one base (the lguest bus), or, with
    ``Vring.split``, the three parts wherever a virtio 1.0 driver put them."""

    def __init__(self, memory: GuestMemory, base: int, num: int, align: int, name: str) -> None:
        used = (base + 16 * num + 4 + 2 * num + 2 + align - 1) & ~(align - 1)
        self._setup(memory, num, name, base, base + 16 * num, used)
        self.base: int | None = base
        self._check_part(base, vring_size(num, align), "ring")

    @classmethod
    def split(cls, memory: GuestMemory, num: int, name: str, desc: int, avail: int,
              used: int) -> "Vring":
        """Rings a virtio 1.0 driver placed itself: each part aligned as the
        spec says (16, 2, 4) and wholly inside guest memory."""
        vq = cls.__new__(cls)
        vq._setup(memory, num, name, desc, avail, used)
        vq.base = None
        for what, addr, align, size in (("descriptor table", desc, 16, 16 * num),
                                        ("avail ring", avail, 2, 6 + 2 * num),
                                        ("used ring", used, 4, 6 + 8 * num)):
            if addr % align:
                raise GuestFault(f"{name}: {what} at {addr:#x} is not {align}-byte aligned")
            vq._check_part(addr, size, what)
        return vq

    def _setup(self, memory: GuestMemory, num: int, name: str, desc: int, avail: int,
               used: int) -> None:
        if num == 0 or num & (num - 1) or num > 32768:
            raise GuestFault(f"{name}: ring size {num} is not a power of two up to 32768")
        self.memory, self.num, self.name = memory, num, name
        self.desc, self.avail, self.used = desc, avail, used
        self.last_avail = 0
        self.used_since_irq = False

    def _check_part(self, addr: int, size: int, what: str) -> None:
        try:
            self.memory.check(addr, size, f"{self.name} {what}")
        except GuestMemoryError as exc:
            raise GuestFault(f"{self.name}: the {what} does not fit in guest memory "
                             f"({exc})") from None

    # -- taking requests -----------------------------------------------------------
    def avail_idx(self) -> int:
        return self.memory.u16(self.avail + 2)

    def pending(self) -> bool:
        return self.avail_idx() != self.last_avail

    def peek(self) -> Chain | None:
        """The next available chain without taking it, or None."""
        avail_idx = self.avail_idx()
        if avail_idx == self.last_avail:
            return None
        if (avail_idx - self.last_avail) & 0xFFFF > self.num:
            raise GuestFault(f"{self.name}: avail index moved {(avail_idx - self.last_avail) & 0xFFFF} "
                             f"entries past a ring of {self.num}")
        slot = self.last_avail % self.num
        return self.walk(self.memory.u16(self.avail + 4 + 2 * slot))

    def advance(self) -> None:
        self.last_avail = (self.last_avail + 1) & 0xFFFF

    def pop(self) -> Chain | None:
        """The next available chain, or None when the guest offered none."""
        chain = self.peek()
        if chain is not None:
            self.advance()
        return chain

    def walk(self, head: int) -> Chain:
        # The hot path of every device: the descriptor table was checked to
        # lie in guest memory when the ring was set up (an indirect table when
        # it is entered), so descriptors are unpacked in place, and each
        # buffer's bounds are compared inline (addr and length are unsigned).
        chain = Chain(head)
        readable, writable = chain.readable, chain.writable
        view, limit = self.memory.view, self.memory.size
        unpack = DESC.unpack_from
        table, size, index = self.desc, self.num, head
        indirect = False
        for _ in range(self.num + 1):
            if index >= size:
                raise GuestFault(f"{self.name}: descriptor index {index} is past the "
                                 f"{'indirect table' if indirect else 'ring'} ({size} entries)")
            addr, length, flags, nxt = unpack(view, table + 16 * index)
            if flags & VRING_DESC_F_INDIRECT:
                if indirect:
                    raise GuestFault(f"{self.name}: nested indirect descriptor table")
                if length % 16 or length == 0:
                    raise GuestFault(f"{self.name}: indirect table length {length} is not "
                                     "a multiple of 16")
                self._check(addr, length, "indirect table")
                table, size, index, indirect = addr, length // 16, 0, True
                continue
            if addr + length > limit:
                self._check(addr, length, "buffer")
            if flags & VRING_DESC_F_WRITE:
                writable.append(view[addr:addr + length])
            else:
                if writable:
                    raise GuestFault(f"{self.name}: a readable buffer follows a writable one")
                readable.append(view[addr:addr + length])
            if not flags & VRING_DESC_F_NEXT:
                return chain
            index = nxt
        raise GuestFault(f"{self.name}: descriptor chain from {head} loops")

    def _check(self, addr: int, length: int, what: str) -> None:
        try:
            self.memory.check(addr, length, what)
        except GuestMemoryError:
            raise GuestFault(f"{self.name}: {what} at {addr:#x} length {length} is outside "
                             "guest memory") from None

    # -- giving results back ----------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        used_idx = self.memory.u16(self.used + 2)
        at = self.used + 4 + 8 * (used_idx % self.num)
        self.memory.set_u32(at, head)
        self.memory.set_u32(at + 4, written)
        # The element before the index: x86 keeps stores in order.
        self.memory.set_u16(self.used + 2, (used_idx + 1) & 0xFFFF)
        self.used_since_irq = True

    def should_interrupt(self) -> bool:
        """Interrupt only for new used entries, and not if the guest said not to."""
        if not self.used_since_irq:
            return False
        self.used_since_irq = False
        memory_barrier()            # the used index is visible before we read the flags
        return not self.memory.u16(self.avail) & VRING_AVAIL_F_NO_INTERRUPT

    def set_no_notify(self, on: bool) -> None:
        flags = self.memory.u16(self.used)
        flags = flags | VRING_USED_F_NO_NOTIFY if on else flags & ~VRING_USED_F_NO_NOTIFY
        self.memory.set_u16(self.used, flags)
        if not on:
            memory_barrier()        # the guest must see this before we re-read avail

    def reset(self) -> None:
        """Forget the ring's progress. A legacy ring lives in pages the
        Launcher owns, so it is cleared for the next driver; a virtio 1.0
        driver's rings are its own memory and stay as they are."""
        if self.base is not None:
            self.memory.write(self.base, bytes(self.used + 4 + 8 * self.num + 2 - self.base))
        self.last_avail = 0
        self.used_since_irq = False
