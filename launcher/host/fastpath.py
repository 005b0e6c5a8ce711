"""The trap fast path: #PF (and system calls through an interrupt gate)
reflected by the Switcher, not by Python.

A ring-3 page fault is the commonest trap a guest takes, and all the Host
does with it is copy cr2 into lguest_data and push the frame the CPU would
have pushed (Traps.deliver). native/switcher.S (fast_page_fault) does the
same without leaving the VM, given a few facts it reads from the GDT page
(which the guest sees read-only):

- the guest's #PF handler and whether its gate is an interrupt gate;
- its ring-1 stack (SET_STACK), for faults from ring 3;
- where lguest_data's cr2 and irq_enabled are, through a two-page window
  the Machine maps onto lguest_data (Machine.map_lguest_data).

The same frame serves a system call through an interrupt gate: Linux 4.x
makes `int $0x80` one, so it cannot be a direct trap, and without this
every system call of a G3 guest would exit.

``FastPath.update`` rewrites them whenever one of those changes (INIT,
LOAD_IDT_ENTRY 14 or 0x80, SET_STACK) and turns the path off when any is missing;
``--no-fast-traps`` keeps it off, so every #PF goes through Python, which
stays the reference. A guest stack the Switcher cannot write makes it give
up and exit as before, so Python decides what happens (usually: kill).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .lguest_data import LHCALL_RING_SIZE

if TYPE_CHECKING:
    from .core import Host

PF_VECTOR = 14


class FastPath:
    FIELDS = ("SW_FAST_ON", "SW_FAST_HANDLER", "SW_FAST_IGATE", "SW_FAST_SS1",
              "SW_FAST_ESP1", "SW_FAST_CR2_AT", "SW_FAST_IRQ_AT", "SW_FAST_SYS_HANDLER",
              "SW_IO_ON", "SW_CPUID_N", "SW_IO_CLAIMED", "SW_HCALL_ON", "SW_PTE_MODE",
              "SW_PTE_LIMIT", "SW_KERNEL_ADDR", "SW_PT_CR3", "SW_BLOCKED_AT", "SW_HSTATUS_AT",
              "SW_PCI_N", "SW_PCI_TABLE", "SW_EMERG_LATCH", "SW_EMERG_OFFSET")

    def __init__(self, host: "Host", enabled: bool = True) -> None:
        self.host = host
        self.enabled = enabled
        image = host.image
        base = image.SW_FAST
        self.words = host.machine.fast_params            # u32 view at SW_FAST
        self.index = {name: (getattr(image, name) - base) // 4 for name in self.FIELDS}
        regpage = image.SW_REGPAGE
        self.i_count = (image.SW_FAST_COUNT - regpage) // 4
        self.i_busy = (image.SW_FAST_BUSY - regpage) // 4
        self.i_syscalls = (image.SW_FAST_SYSCALLS - regpage) // 4
        self.i_gps = (image.SW_FAST_GPS - regpage) // 4
        self.i_ptes = (image.SW_FAST_PTES - regpage) // 4
        self.i_host_pending = (image.SW_HOST_PENDING - regpage) // 4
        self.i_hcall_next = (image.SW_HCALL_NEXT - regpage) // 4
        self.i_pci_latch = (image.SW_PCI_LATCH - regpage) // 4
        self.i_pci_kept = (image.SW_PCI_SHADOW - regpage) // 4
        self.i_emerg_n = (image.SW_EMERG_N - regpage) // 4
        self.emerg_at = image.SW_EMERG_BUF - regpage
        self.emerg_max = image.SW_EMERG_MAX
        self.emergency_sink: Callable[[bytes], None] | None = None
        self._set("SW_EMERG_LATCH", 0)
        self._set("SW_PCI_N", 0)
        self._set("SW_HCALL_ON", 0)
        self._set("SW_PTE_MODE", 0)
        self.window: int | None = None                   # lguest_data's address in it
        self._set("SW_FAST_ON", 0)
        self.claim_ports([])

    def _set(self, name: str, value: int) -> None:
        self.words[self.index[name]] = value & 0xFFFFFFFF

    @property
    def count(self) -> int:
        """Page faults the Switcher reflected by itself."""
        return self.host.requests.words[self.i_count]

    @property
    def ptes(self) -> int:
        """SET_PTEs it checked and carried out by itself."""
        return self.host.requests.words[self.i_ptes]

    def update_paging(self) -> None:
        """SET_PTE in the Switcher: what PageTables.set_pte checks against.
        Off until lguest_data is attached and the paging mode is known."""
        host = self.host
        pt = host.pagetables
        on = self.enabled and self.window is not None and pt.pae is not None
        self._set("SW_PTE_LIMIT", host.device_limit)
        self._set("SW_KERNEL_ADDR", host.kernel_address)
        self._set("SW_PT_CR3", pt.cr3 if pt.cr3 is not None else 0xFFFFFFFF)
        self._set("SW_PTE_MODE", (2 if pt.pae else 1) if on else 0)

    def publish_state(self) -> None:
        """Every resume: what the Switcher checks before it answers a
        hypercall alone (Python's pending IRQs, the async ring's cursor)."""
        words = self.host.requests.words
        words[self.i_host_pending] = self.host.interrupts.pending
        words[self.i_hcall_next] = self.host.async_ring.cursor % LHCALL_RING_SIZE

    @property
    def gps(self) -> int:
        """#GPs (port I/O, cli, CPUID) it answered by itself."""
        return self.host.requests.words[self.i_gps]

    def claim_ports(self, ranges: list[tuple[int, int]]) -> None:
        """The #GP path: on with the trap fast path; ports in ``ranges``
        (inclusive) are a device's, so they always reach Python; CPUID is
        answered where the Machine made it fault and copied its table."""
        image = self.host.image
        if len(ranges) > image.SW_IO_RANGES:
            ranges = [(0, 0xFFFF)]                        # too many: every port to Python
        at = self.index["SW_IO_CLAIMED"]
        for i in range(image.SW_IO_RANGES):
            first, last = ranges[i] if i < len(ranges) else (1, 0)
            self.words[at + 2 * i], self.words[at + 2 * i + 1] = first, last
        self._set("SW_CPUID_N", getattr(self.host.machine, "cpuid_in_switcher", 0)
                  if self.enabled else 0)
        self._set("SW_IO_ON", int(self.enabled))

    def keep_config_writes(self, latches: list[int]) -> None:
        """G3 (virtio/pci_bus.py): configuration dwords that are plain
        storage, named by their 0xCF8 latch value. With the trap fast path
        on, the Switcher keeps writes to them, and to the latch, in the
        register page (``pci_latch``, ``kept``); the rest still exit."""
        latches = latches[:self.host.image.SW_PCI_MAX] if self.enabled else []
        at = self.index["SW_PCI_TABLE"]
        for i, latch in enumerate(latches):
            self.words[at + i] = latch
        self._set("SW_PCI_N", len(latches))

    def gather_emergency_writes(self, latch: int, offset: int,
                                sink: Callable[[bytes], None]) -> None:
        """G3's early console: bytes written to the console's emerg_wr
        through its PCI_CFG window (its data dword named by ``latch``,
        ``offset`` the field's place in BAR 0; the window's fields must be
        table entries 0-2) are gathered by the Switcher, a line at a time,
        and go to ``sink`` at the next exit (see flush_emergency)."""
        self.emergency_sink = sink
        self._set("SW_EMERG_LATCH", latch if self.enabled else 0)
        self._set("SW_EMERG_OFFSET", offset)

    def flush_emergency(self) -> None:
        """Write out what the Switcher gathered. The Host calls this at
        every exit that finds bytes waiting, before it handles the exit, so
        they come out in order with everything the guest writes later; an
        idle guest's HALT exits while any wait (the Switcher sees to it)."""
        words = self.host.requests.words
        n = min(words[self.i_emerg_n], self.emerg_max)   # ring-0 state, yet bounded
        words[self.i_emerg_n] = 0
        if n and self.emergency_sink is not None:
            self.emergency_sink(bytes(words.cast("B")[self.emerg_at:self.emerg_at + n]))

    @property
    def pci_latch(self) -> int:
        """The guest's CONFIG_ADDRESS, wherever it was written."""
        return self.host.requests.words[self.i_pci_latch]

    @pci_latch.setter
    def pci_latch(self, value: int) -> None:
        self.host.requests.words[self.i_pci_latch] = value & 0xFFFFFFFF

    def kept(self, i: int) -> int:
        """The kept dword of entry ``i`` (the guest can write the register
        page: a value, like any the guest writes to that dword)."""
        return self.host.requests.words[self.i_pci_kept + i]

    def set_kept(self, i: int, value: int) -> None:
        self.host.requests.words[self.i_pci_kept + i] = value & 0xFFFFFFFF

    @property
    def syscalls(self) -> int:
        """System calls (through an interrupt gate) it delivered by itself."""
        return self.host.requests.words[self.i_syscalls]

    def attach(self) -> None:
        """At LGUEST_INIT: map lguest_data into the Switcher's window."""
        data = self.host.lguest_data
        self.window = self.host.machine.map_lguest_data(data.gpa, data.layout.size)
        self._set("SW_FAST_CR2_AT", self.window + data.layout.cr2)
        self._set("SW_FAST_IRQ_AT", self.window + data.layout.irq_enabled)
        # Any hypercall answered in the VM checks these first (switcher.S).
        self._set("SW_BLOCKED_AT", self.window + data.layout.blocked_interrupts)
        self._set("SW_HSTATUS_AT", self.window + data.layout.hcall_status)
        self.update()
        self.update_paging()
        # The Switcher reads hypercall arguments from ebx, ecx, edx, esi:
        # a guest that passes them elsewhere (Linux 2.6.25-2.6.29) makes
        # every hypercall through Python.
        self._set("SW_HCALL_ON", int((self.enabled or self.host.clock_vm.on)
                                     and self.host.generation.switcher_reads_args))

    def update(self) -> None:
        host = self.host
        ready = self.enabled and self.window is not None
        pf = host.traps.switcher_gate(PF_VECTOR) if ready else None
        on = pf is not None
        if pf is not None:
            self._set("SW_FAST_HANDLER", pf[0])
            self._set("SW_FAST_IGATE", int(pf[1]))
        # The ring-1 stack serves every delivery the Switcher makes (the
        # clock's tick too, host/clockfast.py), whether this path is on or not.
        self._set("SW_FAST_SS1", host.ss1)
        self._set("SW_FAST_ESP1", host.esp1 if host.ss1 else 0)
        self._set("SW_FAST_ON", int(on))
        # A system call through an interrupt gate (a trap gate is a direct
        # trap: the CPU delivers it, traps.py) goes the same way.
        sys = host.traps.switcher_gate(host.traps.syscall_vector) if ready else None
        self._set("SW_FAST_SYS_HANDLER", sys[0] if sys is not None and sys[1] else 0)
