"""Encoding x86 segment descriptors and gates as 64-bit values.

Pure functions, shared by the VM bring-up (launcher/machine.py) and the Host's
segment and IDT duties. A descriptor is handled as one u64, low word first,
exactly as it sits in the GDT or IDT.
"""
from __future__ import annotations

SEG_ACCESSED = 1 << 40      # type bit 0: the CPU would otherwise write it
SEG_PRESENT = 1 << 47
SEG_DPL_SHIFT = 45
SEG_TYPE_SHIFT = 40

GATE_INTERRUPT = 0xE
GATE_TRAP = 0xF


def segment(base: int, limit: int, type_: int, dpl: int, *, system: bool = False,
            db: bool = True, granular: bool = True) -> int:
    """A code/data (or system, for the TSS) segment descriptor."""
    d = limit & 0xFFFF
    d |= (base & 0xFFFFFF) << 16
    d |= (type_ & 0xF) << 40
    d |= (0 if system else 1) << 44
    d |= (dpl & 3) << 45
    d |= SEG_PRESENT
    d |= ((limit >> 16) & 0xF) << 48
    d |= (1 if db else 0) << 54
    d |= (1 if granular else 0) << 55
    d |= ((base >> 24) & 0xFF) << 56
    return d


def split(desc: int) -> tuple[int, int]:
    return desc & 0xFFFFFFFF, desc >> 32


def join(low: int, high: int) -> int:
    return (low & 0xFFFFFFFF) | ((high & 0xFFFFFFFF) << 32)


def dpl(desc: int) -> int:
    return (desc >> SEG_DPL_SHIFT) & 3


def present(desc: int) -> bool:
    return bool(desc & SEG_PRESENT)


def gate(handler: int, selector: int, type_: int, dpl_: int, present_: bool = True) -> int:
    """An interrupt (0xE) or trap (0xF) gate."""
    low = (selector << 16) | (handler & 0xFFFF)
    high = (handler & 0xFFFF0000) | ((1 if present_ else 0) << 15) | ((dpl_ & 3) << 13) \
        | ((type_ & 0xF) << 8)
    return join(low, high)


def gate_handler(low: int, high: int) -> int:
    return (low & 0xFFFF) | (high & 0xFFFF0000)


def gate_type(high: int) -> int:
    return (high >> 8) & 0xF


def gate_dpl(high: int) -> int:
    return (high >> 13) & 3


def gate_present(high: int) -> bool:
    return bool(high & 0x8000)
