"""``struct lguest_data``: the page of state the guest shares with the Host.

The guest passes its guest-physical address to LGUEST_INIT. Field offsets
move between kernel generations (docs/abi.md §4, §12.3): each
generation's ``LguestDataLayout`` is in generations.py.
"""
from __future__ import annotations

from ..generations import LguestDataLayout
from ..memory import GuestMemory

LHCALL_RING_SIZE = 64


class LguestData:
    """Typed access to one guest's lguest_data, every access bounds-checked."""

    def __init__(self, memory: GuestMemory, gpa: int, layout: LguestDataLayout) -> None:
        memory.check(gpa, layout.size, "lguest_data")
        self.memory, self.gpa, self.layout = memory, gpa, layout

    def get(self, field: str) -> int:
        return self.memory.u32(self.gpa + getattr(self.layout, field))

    def set(self, field: str, value: int) -> None:
        self.memory.set_u32(self.gpa + getattr(self.layout, field), value)

    def set_irq_pending(self, value: int) -> None:
        """irq_pending asks the guest for SEND_INTERRUPTS when it turns
        interrupts back on; a guest without the field (Linux 2.6.25-2.6.30)
        is found by the Host's kicks alone."""
        if self.layout.irq_pending is not None:
            self.set("irq_pending", value)

    def set_time(self, sec: int, nsec: int) -> None:
        at = self.gpa + self.layout.time
        self.memory.set_u32(at, sec)
        self.memory.set_u32(at + 4, nsec)
