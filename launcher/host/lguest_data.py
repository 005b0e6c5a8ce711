"""``struct lguest_data``: the page of state the guest shares with the Host.

The guest passes its guest-physical address to LGUEST_INIT. Field offsets
move between kernel generations (docs/abi.md §4, §12.3), so each
generation is a ``LguestDataLayout`` and the Host picks one per guest.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..memory import GuestMemory

LHCALL_RING_SIZE = 64
HCALL_ARGS_SIZE = 20       # struct hcall_args: arg0..arg4


@dataclass(frozen=True)
class LguestDataLayout:
    name: str
    irq_enabled: int = 0
    blocked_interrupts: int = 4
    cr2: int = 8
    time: int = 12
    irq_pending: int = 20
    hcall_status: int = 24
    hcalls: int = 88
    reserve_mem: int = 1368
    tsc_khz: int = 1372
    pgdir: int | None = None
    noirq_start: int | None = 1376
    noirq_end: int | None = 1380
    noirq_iret: int | None = None
    kernel_address: int = 1384
    syscall_vec: int = 1388
    size: int = 1392


G1 = LguestDataLayout("G1", pgdir=1376, noirq_start=1380, noirq_end=1384,
                      kernel_address=1388, syscall_vec=1392, size=1396)
G2 = LguestDataLayout("G2")
G3 = LguestDataLayout("G3", noirq_start=None, noirq_end=None, noirq_iret=1376,
                      kernel_address=1380, syscall_vec=1384, size=1388)


class LguestData:
    """Typed access to one guest's lguest_data, every access bounds-checked."""

    def __init__(self, memory: GuestMemory, gpa: int, layout: LguestDataLayout) -> None:
        memory.check(gpa, layout.size, "lguest_data")
        self.memory, self.gpa, self.layout = memory, gpa, layout

    def get(self, field: str) -> int:
        return self.memory.u32(self.gpa + getattr(self.layout, field))

    def set(self, field: str, value: int) -> None:
        self.memory.set_u32(self.gpa + getattr(self.layout, field), value)

    def set_time(self, sec: int, nsec: int) -> None:
        at = self.gpa + self.layout.time
        self.memory.set_u32(at, sec)
        self.memory.set_u32(at + 4, nsec)
