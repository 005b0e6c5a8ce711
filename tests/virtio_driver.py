"""A tiny virtio driver in Python, for testing devices without a guest: it
lays out a legacy ring in fabricated guest memory and offers chains."""
from __future__ import annotations

import struct

from launcher.memory import GuestMemory
from launcher.virtio.vring import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, Vring


class FakeDriver:
    def __init__(self, memory: GuestMemory, base: int, num: int = 16, data: int = 0x80000):
        self.memory, self.base, self.num = memory, base, num
        self.vring = Vring(memory, base, num, 4096, "test queue")
        self.next_desc = 0
        self.avail_idx = 0
        self.used_seen = 0
        self.data = data                    # a bump allocator for buffers

    def alloc(self, size: int) -> int:
        at = self.data
        self.data += (size + 15) & ~15
        return at

    def desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.memory.write(self.vring.desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def offer(self, readable: list[bytes], writable: list[int]) -> tuple[int, list[int]]:
        """Queue a chain; returns its head and the addresses of writable buffers."""
        bufs = [(self.alloc(len(b)), len(b), 0, b) for b in readable]
        bufs += [(self.alloc(n), n, VRING_DESC_F_WRITE, None) for n in writable]
        head = self.next_desc
        for k, (addr, length, flags, content) in enumerate(bufs):
            i = (head + k) % self.num
            if content is not None:
                self.memory.write(addr, content)
            last = k == len(bufs) - 1
            self.desc(i, addr, length, flags | (0 if last else VRING_DESC_F_NEXT),
                      (i + 1) % self.num)
        self.next_desc = (head + len(bufs)) % self.num
        self.publish(head)
        return head, [b[0] for b in bufs if b[3] is None]

    def publish(self, head: int) -> None:
        slot = self.avail_idx % self.num
        self.memory.set_u16(self.vring.avail + 4 + 2 * slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.set_u16(self.vring.avail + 2, self.avail_idx)

    def used(self) -> list[tuple[int, int]]:
        idx = self.memory.u16(self.vring.used + 2)
        out = []
        while self.used_seen != idx:
            at = self.vring.used + 4 + 8 * (self.used_seen % self.num)
            out.append((self.memory.u32(at), self.memory.u32(at + 4)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out
