"""Guest memory as an object whose every access is bounds-checked.

The Host never touches guest RAM through a raw pointer: each read or write
names the guest-physical address and length, and anything outside
[0, limit) raises ``GuestMemoryError`` (a ``GuestFault``), which the exit loop
turns into killing the guest with the address. Tests fabricate a
``GuestMemory`` over a plain ``bytearray``.

The guest runs while devices and the Host read and write its memory, so an
aligned 16-, 32- or 64-bit access is one load or one store, as the guest's
own would be: a virtqueue's used index must never be seen half-written.
``struct.pack_into`` cannot promise that (CPython zero-fills the field and
then stores it a byte at a time: a guest polling the index could read 0),
so aligned accesses go through views of the memory cast to that width,
whose item accesses are single machine loads and stores (x86 is
little-endian, as the guest is); only unaligned ones use ``struct``.
"""
from __future__ import annotations

import struct

from .errors import GuestMemoryError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemory:
    """Guest-physical memory [0, size) backed by a writable buffer."""

    def __init__(self, buffer) -> None:
        self.view = memoryview(buffer).cast("B")
        self.size = len(self.view)
        # Indexed by addr >> 1, >> 2, >> 3 (over the whole units only).
        self._h = self.view[:self.size & ~1].cast("H")
        self._i = self.view[:self.size & ~3].cast("I")
        self._q = self.view[:self.size & ~7].cast("Q")

    def release(self) -> None:
        """Drop every view of the buffer, so that its owner can close it."""
        for view in (self._h, self._i, self._q, self.view):
            view.release()

    def check(self, addr: int, length: int, what: str = "") -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise GuestMemoryError(addr, length, self.size, what)

    def read(self, addr: int, length: int, what: str = "") -> bytes:
        self.check(addr, length, what)
        return bytes(self.view[addr:addr + length])

    def write(self, addr: int, data: bytes, what: str = "") -> None:
        self.check(addr, len(data), what)
        self.view[addr:addr + len(data)] = data

    def slice(self, addr: int, length: int, what: str = "") -> memoryview:
        """A zero-copy window, for devices moving bulk data."""
        self.check(addr, length, what)
        return self.view[addr:addr + length]

    def u8(self, addr: int, what: str = "") -> int:
        self.check(addr, 1, what)
        return self.view[addr]

    def u16(self, addr: int, what: str = "") -> int:
        self.check(addr, 2, what)
        if addr & 1:
            return _U16.unpack_from(self.view, addr)[0]
        return self._h[addr >> 1]

    def u32(self, addr: int, what: str = "") -> int:
        self.check(addr, 4, what)
        if addr & 3:
            return _U32.unpack_from(self.view, addr)[0]
        return self._i[addr >> 2]

    def u64(self, addr: int, what: str = "") -> int:
        self.check(addr, 8, what)
        if addr & 7:
            return _U64.unpack_from(self.view, addr)[0]
        return self._q[addr >> 3]

    def set_u8(self, addr: int, value: int, what: str = "") -> None:
        self.check(addr, 1, what)
        self.view[addr] = value & 0xFF

    def set_u16(self, addr: int, value: int, what: str = "") -> None:
        self.check(addr, 2, what)
        if addr & 1:
            _U16.pack_into(self.view, addr, value & 0xFFFF)
        else:
            self._h[addr >> 1] = value & 0xFFFF

    def set_u32(self, addr: int, value: int, what: str = "") -> None:
        self.check(addr, 4, what)
        if addr & 3:
            _U32.pack_into(self.view, addr, value & 0xFFFFFFFF)
        else:
            self._i[addr >> 2] = value & 0xFFFFFFFF

    def set_u64(self, addr: int, value: int, what: str = "") -> None:
        self.check(addr, 8, what)
        if addr & 7:
            _U64.pack_into(self.view, addr, value & 0xFFFFFFFFFFFFFFFF)
        else:
            self._q[addr >> 3] = value & 0xFFFFFFFFFFFFFFFF

    def cstring(self, addr: int, maxlen: int, what: str = "") -> bytes:
        """Bytes up to the first NUL, reading at most ``maxlen`` bytes, all
        of which must lie inside guest memory."""
        self.check(addr, maxlen, what)
        raw = bytes(self.view[addr:addr + maxlen])
        end = raw.find(b"\0")
        return raw if end < 0 else raw[:end]
