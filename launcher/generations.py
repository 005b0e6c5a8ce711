"""Every difference between lguest guest releases, in one place (docs/abi.md §0).

lguest's guest ABI moved with the kernel: the hypercall instruction and the
registers its arguments come in, the layout of ``struct lguest_data`` and
of its async ring, which hypercall numbers exist, who builds the first page
tables, and how the devices are found. A ``Generation`` holds all of that
for one span of releases; the launcher picks one from the kernel's version
string (``for_version``) before anything boots, and the Host, the loader
and the bus ask it instead of testing names.

    G0  Linux 2.6.23            the first lguest bus: devices moved data by
                                DMA hypercalls; booted by the Launcher itself
                                (launcher/dma/, bootparams.py)
    G1  Linux 2.6.24 - 2.6.39   the lguest bus (2.6.24: the first virtio's
                                descriptors); the Host builds the boot page
                                tables; four hypercall conventions (below)
    G2  Linux 3.0 - 4.0         the lguest bus
    G3  Linux 4.1 - 4.13        virtio 1.0 over an emulated PCI bus

Read host/core.py next: how the Host uses these facts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .errors import UserError
from .switcher import EBX, ECX, EDX, ESI


@dataclass(frozen=True)
class LguestDataLayout:
    """Where each field of ``struct lguest_data`` is (docs/abi.md §4)."""
    name: str
    irq_enabled: int = 0
    blocked_interrupts: int = 4
    cr2: int = 8
    time: int = 12
    irq_pending: int | None = 20      # None: the guest has no such field (2.6.25-2.6.30)
    hcall_status: int = 24
    hcalls: int = 88
    reserve_mem: int = 1368
    tsc_khz: int = 1372
    pgdir: int | None = None
    noirq_start: int | None = 1376
    noirq_end: int | None = 1380
    noirq_iret: int | None = None
    kernel_address: int | None = 1384   # None: 2.6.23, which has neither field
    syscall_vec: int | None = 1388
    guestid: int | None = None      # 2.6.23: a u16 the Host fills in (its MAC's bytes 2-3)
    size: int = 1392


# Linux 2.6.23: the 2.6.25 layout up to tsc_khz, with a u16 guestid before it.
G0_DATA = LguestDataLayout("G0 (2.6.23)", irq_pending=None, hcall_status=20, hcalls=84,
                           reserve_mem=1108, guestid=1112, tsc_khz=1116, noirq_start=1120,
                           noirq_end=1124, kernel_address=None, syscall_vec=None, size=1128)
# Linux 2.6.25-2.6.30: no irq_pending, and four-word async-ring entries.
G1_EARLY = LguestDataLayout("G1 (2.6.25-2.6.30)", irq_pending=None, hcall_status=20, hcalls=84,
                            reserve_mem=1108, tsc_khz=1112, pgdir=1116, noirq_start=1120,
                            noirq_end=1124, kernel_address=1128, syscall_vec=1132, size=1136)
G1 = LguestDataLayout("G1", pgdir=1376, noirq_start=1380, noirq_end=1384,
                      kernel_address=1388, syscall_vec=1392, size=1396)
G2 = LguestDataLayout("G2")
G3 = LguestDataLayout("G3", noirq_start=None, noirq_end=None, noirq_iret=1376,
                      kernel_address=1380, syscall_vec=1384, size=1388)

# The Host's duties by name; each generation maps its call numbers onto them.
_COMMON = {0: "FLUSH_ASYNC", 1: "LGUEST_INIT", 2: "SHUTDOWN", 4: "NEW_PGTABLE",
           5: "FLUSH_TLB", 6: "LOAD_IDT_ENTRY", 7: "SET_STACK", 8: "TS",
           9: "SET_CLOCKEVENT", 10: "HALT", 14: "SET_PTE", 16: "LOAD_TLS", 17: "NOTIFY"}
# 2.6.25-2.6.29: the whole GDT in one call (3); 15 sets a top-level entry
# (the kernel called it SET_PMD; it is what later releases call SET_PGD).
CALLS_2_6_25 = {**_COMMON, 3: "LOAD_GDT", 15: "SET_PGD"}
# 2.6.23: the same numbers, 11 unused, and the DMA calls of its devices
# (12, 13) where later releases have SET_PMD's 13. 2 is CRASH, which the
# guest also makes to power off ("Power down"): SHUTDOWN's duty.
CALLS_2_6_23 = {**{n: d for n, d in CALLS_2_6_25.items() if n != 17},
                12: "BIND_DMA", 13: "SEND_DMA"}
# 2.6.30: one GDT entry at a time (18).
CALLS_2_6_30 = {**_COMMON, 15: "SET_PGD", 18: "LOAD_GDT_ENTRY"}
# 2.6.31 on: PAE guests (13 sets a PMD entry) and SEND_INTERRUPTS (19).
CALLS_MODERN = {**_COMMON, 13: "SET_PMD", 15: "SET_PGD", 18: "LOAD_GDT_ENTRY",
                19: "SEND_INTERRUPTS"}


@dataclass(frozen=True)
class RingEntry:
    """One async-ring entry (``struct hcall_args``): its size and where each
    argument sits in it (arg0, the call number, is always first)."""
    size: int
    args: tuple[int, ...]        # byte offsets of arg1, arg2, ...


@dataclass(frozen=True)
class Generation:
    name: str                    # G1, G2, G3
    releases: str                # for messages: "2.6.31-2.6.33"
    first: tuple[int, int, int]  # the first release it covers
    data: LguestDataLayout
    arg_registers: tuple[int, ...]       # register-page slots of arg1, arg2, ...
    ring: RingEntry
    calls: dict[int, str] = field(repr=False)
    vmcall: bool = False         # some calls are `vmcall` (see host/vmcall.py)
    vmcall_site_known: bool = False  # its only `vmcall` is rewritten at INIT
    host_boot_tables: bool = False   # the Host builds the first page tables (§1.5)
    bus: str = "lguest"          # "lguest", "pci", or "dma" (2.6.23: launcher/dma/)
    start_on_kick: bool = False  # a device starts at DRIVER_OK or its first kick (G1)
    may_be_pae: bool = True
    first_virtio: bool = False   # Linux 2.6.24's devices: typed config fields (lguest_bus.py)
    # 2.6.23: the Launcher unpacks the kernel and enters it after the string
    # "GenuineLguest", at its virtual address (bootparams.py); from 2.6.24
    # the x86 boot protocol's hardware_subarch does it.
    enters_after_signature: bool = False

    @property
    def switcher_reads_args(self) -> bool:
        """The Switcher's in-VM hypercalls read arg1-3 from ebx, ecx, edx
        and a PAE entry's high half from esi (native/switcher.S)."""
        return self.arg_registers[:3] == (EBX, ECX, EDX) and (
            len(self.arg_registers) == 4 or not self.may_be_pae)

    def call_number(self, duty: str) -> int | None:
        """The number this generation gives a duty ("SEND_INTERRUPTS"), or
        None when it has no such call."""
        return next((n for n, d in self.calls.items() if d == duty), None)

    def describe(self) -> str:
        how = {"pci": "virtio 1.0 devices on an emulated PCI bus",
               "dma": "DMA devices on the first lguest bus"}.get(self.bus,
                                                                 "devices on the lguest bus")
        return f"{self.name}, Linux {self.releases}: {how}"


_FIVE = RingEntry(20, (4, 8, 12, 16))
_EBX_ON = (EBX, ECX, EDX, ESI)

# 2.6.23: `int $0x1f`, arguments in edx, ebx, ecx; its ring entry keeps
# them in that order after the call.
G0 = Generation("G0", "2.6.23", (2, 6, 23), G0_DATA, (EDX, EBX, ECX), RingEntry(16, (4, 8, 12)),
                CALLS_2_6_23, bus="dma", may_be_pae=False, enters_after_signature=True)
# 2.6.25-2.6.29: `int $0x1f`, arguments in edx, ebx, ecx; the ring entry
# lays them out as the registers are saved (eax ebx ecx edx): call, arg2,
# arg3, arg1.
G1_2_6_25 = Generation("G1", "2.6.25-2.6.29", (2, 6, 25), G1_EARLY, (EDX, EBX, ECX),
                       RingEntry(16, (12, 4, 8)), CALLS_2_6_25, host_boot_tables=True,
                       start_on_kick=True, may_be_pae=False)
# 2.6.24: the same hypercalls, but the first virtio's device descriptors.
G1_2_6_24 = replace(G1_2_6_25, releases="2.6.24", first=(2, 6, 24), first_virtio=True)
# 2.6.30: every call is `vmcall`, arguments in ebx, ecx, edx.
G1_2_6_30 = Generation("G1", "2.6.30", (2, 6, 30), G1_EARLY, (EBX, ECX, EDX),
                       RingEntry(16, (4, 8, 12)), CALLS_2_6_30, vmcall=True,
                       host_boot_tables=True, start_on_kick=True, may_be_pae=False)
# 2.6.31-2.6.33: `vmcall` with a fourth argument (esi), PAE guests, irq_pending.
G1_2_6_31 = Generation("G1", "2.6.31-2.6.33", (2, 6, 31), G1, _EBX_ON, _FIVE, CALLS_MODERN,
                       vmcall=True, host_boot_tables=True, start_on_kick=True)
# 2.6.34-2.6.39: `int $0x1f` again, but for one `vmcall` in send_interrupts.
G1_2_6_34 = Generation("G1", "2.6.34-2.6.39", (2, 6, 34), G1, _EBX_ON, _FIVE, CALLS_MODERN,
                       vmcall=True, vmcall_site_known=True, host_boot_tables=True,
                       start_on_kick=True)
GEN_G2 = Generation("G2", "3.0-4.0", (3, 0, 0), G2, _EBX_ON, _FIVE, CALLS_MODERN)
GEN_G3 = Generation("G3", "4.1-4.13", (4, 1, 0), G3, _EBX_ON, _FIVE, CALLS_MODERN, bus="pci")

# Newest first: a kernel is the first generation it is not older than.
GENERATIONS = (GEN_G3, GEN_G2, G1_2_6_34, G1_2_6_31, G1_2_6_30, G1_2_6_25, G1_2_6_24, G0)


def release(version: str) -> tuple[int, int, int] | None:
    """(2, 6, 32) from "2.6.32.63 (gcc ...)" or "3.14.40"; None if none."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def for_version(version: str) -> Generation:
    """The generation a kernel speaks, from its version string. An image
    with none (the own guest) speaks G2. A release lguest never ran on, or
    one this launcher cannot run, is a UserError naming it."""
    rel = release(version)
    if rel is None:
        return GEN_G2
    name = f"Linux {version.split()[0]}"
    if rel[:2] >= (4, 14):
        raise UserError(f"{name} has no lguest guest support (it was removed in 4.14)")
    if rel < (2, 6, 23):
        raise UserError(f"{name} predates lguest (its first guest was Linux 2.6.23)")
    for gen in GENERATIONS:
        if rel >= gen.first:
            return gen
    raise AssertionError(version)
