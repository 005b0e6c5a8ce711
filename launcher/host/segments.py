"""The GDT duty: LOAD_GDT_ENTRY and LOAD_TLS (docs/abi.md §2).

The guest's descriptors go into the real GDT (in the Switcher's read-only
slot, written through the Host's own mapping) with lguest's fixups: DPL 0
becomes 1, since the guest kernel runs in ring 1, and the accessed bit is
preset, since the CPU can never write that page. The Host's own entries
(its code, data and TSS, and the double-fault TSS) are never replaced.
"""
from __future__ import annotations

from ..errors import GuestFault
from ..machine import (GDT_ENTRIES, GDT_ENTRY_DOUBLEFAULT_TSS, GDT_ENTRY_TSS,
                       LGUEST_CS_ENTRY, LGUEST_DS_ENTRY, Machine)
from ..memory import GuestMemory
from .. import descriptors as D

GDT_ENTRY_TLS_MIN, GDT_ENTRIES_TLS = 6, 3
HOST_ENTRIES = frozenset((LGUEST_CS_ENTRY, LGUEST_DS_ENTRY, GDT_ENTRY_TSS,
                          GDT_ENTRY_DOUBLEFAULT_TSS))


def fixup(desc: int) -> int:
    """lguest's fixups: ring 0 descriptors become ring 1; accessed preset."""
    if D.dpl(desc) == 0:
        desc |= 1 << D.SEG_DPL_SHIFT
    return desc | D.SEG_ACCESSED


class Segments:
    def __init__(self, machine: Machine, memory: GuestMemory) -> None:
        self.gdt = machine.gdt
        self.memory = memory
        # The guest's own view, as it gave it (before fixups).
        self.guest_gdt = [0] * GDT_ENTRIES

    def load_gdt_entry(self, index: int, low: int, high: int) -> None:
        if index >= GDT_ENTRIES:
            raise GuestFault(f"LOAD_GDT_ENTRY: GDT index {index} is past the {GDT_ENTRIES} entries")
        desc = D.join(low, high)
        self.guest_gdt[index] = desc
        if index not in HOST_ENTRIES:
            self.gdt[index] = fixup(desc)

    def load_gdt(self, gpa: int, count: int) -> None:
        """LOAD_GDT (Linux 2.6.25-2.6.29): the whole table at once, as
        ``count`` descriptors at ``gpa``, each as LOAD_GDT_ENTRY would."""
        if count > GDT_ENTRIES:
            raise GuestFault(f"LOAD_GDT: {count} entries, more than the {GDT_ENTRIES} of the GDT")
        raw = self.memory.read(gpa, 8 * count, "LOAD_GDT descriptors")
        for i in range(count):
            self.load_gdt_entry(i, int.from_bytes(raw[8 * i:8 * i + 4], "little"),
                                int.from_bytes(raw[8 * i + 4:8 * i + 8], "little"))

    def load_tls(self, gpa: int) -> None:
        raw = self.memory.read(gpa, 8 * GDT_ENTRIES_TLS, "LOAD_TLS descriptors")
        for i in range(GDT_ENTRIES_TLS):
            desc = int.from_bytes(raw[8 * i:8 * i + 8], "little")
            self.guest_gdt[GDT_ENTRY_TLS_MIN + i] = desc
            self.gdt[GDT_ENTRY_TLS_MIN + i] = fixup(desc)
