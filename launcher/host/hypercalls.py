"""Hypercall numbers (docs/abi.md §3.2) and the dispatch table.

A hypercall is `int $0x1f` with the call number in eax and up to four
arguments in ebx, ecx, edx, esi. The Host looks the number up in a plain
dict of bound methods (built once, so dispatch is one lookup) and calls the
handler with the four arguments. No hypercall returns a value.
"""
from __future__ import annotations

from typing import Callable

LHCALL_FLUSH_ASYNC = 0
LHCALL_LGUEST_INIT = 1
LHCALL_SHUTDOWN = 2
LHCALL_NEW_PGTABLE = 4
LHCALL_FLUSH_TLB = 5
LHCALL_LOAD_IDT_ENTRY = 6
LHCALL_SET_STACK = 7
LHCALL_TS = 8
LHCALL_SET_CLOCKEVENT = 9
LHCALL_HALT = 10
LHCALL_SET_PMD = 13
LHCALL_SET_PTE = 14
LHCALL_SET_PGD = 15
LHCALL_LOAD_TLS = 16
LHCALL_NOTIFY = 17
LHCALL_LOAD_GDT_ENTRY = 18
LHCALL_SEND_INTERRUPTS = 19

NAMES = {value: name for name, value in globals().items() if name.startswith("LHCALL_")}

Handler = Callable[[int, int, int, int], None]


def name_of(number: int) -> str:
    return NAMES.get(number, f"hypercall {number}")
