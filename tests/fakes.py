"""A Machine without KVM, for pure-logic tests of the Host.

It has everything the Host touches — guest memory, the register frame, GDT,
IDT, TSS, the request area and the Switcher image — over plain bytearrays.
"""
from __future__ import annotations

from launcher.machine import (GDT_ENTRIES, IDT_ENTRIES, Layout, Machine)
from launcher.memory import GuestMemory
from launcher.switcher import NREGS, PAGE, RequestArea, load_image


class FakeVcpu:
    def __init__(self) -> None:
        self.kicks = 0

    def clear_kick(self) -> None:
        pass

    def kick(self) -> None:
        self.kicks += 1

    def stop(self) -> None:
        self.stopped = True

    # KVM_EXIT_MMIO: tests set mmio_next; a read's data lands in mmio_result.
    mmio_next: tuple = (0, 4, None)
    mmio_result: int | None = None

    def mmio_access(self) -> tuple:
        return self.mmio_next

    def mmio_complete_read(self, value: int) -> None:
        self.mmio_result = value


class FakeMachine:
    host_gate = Machine.host_gate
    switcher_pde = Machine.switcher_pde
    switcher_pae_pmd = Machine.switcher_pae_pmd
    set_guest_stack = Machine.set_guest_stack

    def map_lguest_data(self, gpa: int, size: int) -> int:
        self.windows.append((gpa, size))
        return self.image.SW_LDATA_WINDOW + (gpa & (PAGE - 1))

    def __init__(self, ram_size: int = 4 << 20) -> None:
        self.image = load_image()
        self.layout = Layout(ram_size, ram_size)
        self.memory = GuestMemory(bytearray(ram_size))
        self.gdt = memoryview(bytearray(GDT_ENTRIES * 8)).cast("Q")
        self.idt = memoryview(bytearray(IDT_ENTRIES * 8)).cast("Q")
        self.tss = memoryview(bytearray(PAGE)).cast("I")
        self.regpage = memoryview(bytearray(PAGE)).cast("I")
        first = (self.image.SW_REGS - self.image.SW_REGPAGE) // 4
        self.regs = self.regpage[first:first + NREGS]
        self.requests = RequestArea(self.image, self.regpage)
        self.fast_params = memoryview(
            bytearray(self.image.SW_FAST_END - self.image.SW_FAST)).cast("I")
        self.windows: list[tuple[int, int]] = []
        self.vcpu = FakeVcpu()
        self.tsc_khz = 1_000_000
        self.cpuid_faulting = False
        for v in range(IDT_ENTRIES):
            self.idt[v] = self.host_gate(v, 0)


def hypercall(h, number: int, a: int = 0, b: int = 0, c: int = 0) -> None:
    """Make the guest's registers a hypercall and let the Host handle it."""
    from launcher.switcher import EAX, EBX, ECX, EDX, TRAPNUM
    r = h.regs
    r[TRAPNUM], r[EAX], r[EBX], r[ECX], r[EDX] = 0x1F, number, a, b, c
    h.handle_trap()
