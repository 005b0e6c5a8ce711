"""The exit loop: where every trip out of the guest lands.

One iteration (docs/architecture.md, "One exit, end to end"):

1. ``prepare_resume``: deliver a pending virtual interrupt if the guest can
   take one, check the frame we are about to resume (cs/ss ring 1 or 3, IF on,
   IOPL 0), and publish the privileged requests for the Switcher;
2. KVM_RUN (``lib.shim_vcpu_run``, see kvm.Vcpu) until the Switcher's
   `out` (or another exit);
3. decode the register page and dispatch: a hypercall by number, a trap by
   vector. A handler that finds the guest misbehaving raises ``GuestFault``
   and the loop kills the guest with that reason.

Next: hypercalls.py for the numbers, traps.py for delivery into the guest.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ..bootparams import IMAGE_BOUND
from ..errors import GuestFault
from ..fastpaths import choose
from ..generations import GEN_G2, Generation
from ..kvm import EXIT_NAMES, KvmError, lib
from ..machine import KICK_VECTOR, LGUEST_TRAP_ENTRY, X86_EFLAGS_IF, Machine
from ..switcher import (CS, DS, EAX, EBP, EBX, ECX, EDI, EDX, EFLAGS, EIP, ERRCODE, ES, ESI,
                        FS, GS, SS, TRAPNUM, PAGE)
from . import hypercalls as H
from . import boottables, vmcall
from .asyncring import AsyncRing
from .clockfast import ClockInVm
from .fastpath import FastPath
from .interrupts import Interrupts
from .lguest_data import LguestData
from .notify import NotifyMap
from .pagetables import PageTables
from .segments import Segments
from .timer import ClockEvent
from .trace import ExitRecorder
from .traps import Traps

LGUEST_SHUTDOWN_POWEROFF, LGUEST_SHUTDOWN_RESTART = 1, 2
X86_EFLAGS_IOPL = 0x3000
X86_EFLAGS_VM = 0x20000
# Selectors the guest may hold in ds/es/fs/gs: null, or a GDT entry that is
# not one of the Host's own (docs/abi.md §2.1). Whether the descriptor
# there is usable is the CPU's to say: a bad one faults in the Switcher,
# which reports it (switcher_fault_message).
_HOST_GDT_ENTRIES = (10, 11, 16, 31)
# ModRM r/m numbers -> struct lguest_regs slots (eax ecx edx ebx esp ebp esi edi);
# esp (4) is left out on purpose: the guest's stack pointer is not ours to zero.
_MODRM_REGS = {0: EAX, 1: ECX, 2: EDX, 3: EBX, 5: EBP, 6: ESI, 7: EDI}
_EFLAGS_KEEP = ~(X86_EFLAGS_IOPL | X86_EFLAGS_VM) & 0xFFFFFFFF
VALID_DATA_SELECTORS = frozenset(
    sel for sel in range(0x10000)
    if sel < 4 or (sel >> 3 < 32 and not sel & 4 and sel >> 3 not in _HOST_GDT_ENTRIES))


@dataclass
class Outcome:
    """How a run ended: ``kind`` is poweroff, restart, crash or killed."""
    kind: str
    message: str


class Host:
    """The lguest Host for one guest on one ``Machine``."""

    def __init__(self, machine: Machine, generation: Generation = GEN_G2,
                 pae: bool | None = None, fast_traps: bool | None = None) -> None:
        self.machine = machine
        self.generation = generation
        self.layout = generation.data
        # G1: where the Launcher left room for the boot page tables (the
        # start of the initrd, or the end of RAM); the Session sets it.
        self.boot_tables_below = machine.layout.ram_size
        # Where the unpacked kernel lies (bootparams.BootInfo.image), for
        # what G1's INIT looks for in it; the Session sets it.
        self.kernel_image = IMAGE_BOUND
        self.lguest_data: LguestData | None = None
        self.memory = machine.memory
        self.regs = machine.regs
        self.requests = machine.requests
        self.image = machine.image
        self._clear_kick = machine.vcpu.clear_kick
        self.segments = Segments(machine, machine.memory)
        self.traps = Traps(self)
        self.outcome: Outcome | None = None
        self.signals = 0              # KVM_RUNs cut short by a signal for Python
        self.mmio_exits = 0           # G3 device-register accesses
        self.vmcall_rewrites = 0      # G1 `vmcall`s made `int $0x1f` (host/vmcall.py)
        self.fast_faults = 0          # #PFs the Switcher reflected (at the end of a run)
        self.in_vm: Counter[str] = Counter()   # all the Switcher did alone, by kind (ditto)
        self.hypercall_counts: Counter[int] = Counter()
        self.trap_counts: Counter[int] = Counter()
        self.ss1, self.esp1 = 0, 0
        self.noirq = (0, 0)           # G1/G2: the guest's iret window
        self.noirq_iret = -1          # G3: the guest's final iret
        self.kernel_address = 0       # PAGE_OFFSET: from LGUEST_INIT, or the Session (G0)
        self.guestid = 0              # G0: lguest_data.guestid (the Session sets it)
        self.last_cr2 = 0
        self.ram_limit = machine.layout.slot0_size
        self.device_limit = self.ram_limit   # G3: the end of the PCI BARs
        self.pagetables = PageTables(self, pae)
        self.interrupts = Interrupts(self)
        self.async_ring = AsyncRing(self)
        self.notify_map = NotifyMap()
        self.clock: ClockEvent | None = None      # started by LGUEST_INIT
        self.fast = FastPath(self, choose(fast_traps))    # #PF reflected by the Switcher
        self.clock_vm = ClockInVm(self)           # clock, HALT, tick in the Switcher
        self.recorder: ExitRecorder | None = None # --stats / --trace
        self.ts_wanted = False
        pt = self.pagetables
        duties: dict[str, H.Handler] = {
            "LGUEST_INIT": self.hcall_init,
            "SHUTDOWN": self.hcall_shutdown,
            "NEW_PGTABLE": lambda top, _a, _b, _c: pt.new_pgtable(top),
            "FLUSH_TLB": lambda all_, _a, _b, _c: pt.flush_tlb(all_),
            "LOAD_IDT_ENTRY": self.load_idt_entry,
            "SET_STACK": lambda ss, esp, pages, _: self.set_stack(ss, esp, pages),
            "TS": lambda ts, _a, _b, _c: self.set_ts(ts),
            "SET_CLOCKEVENT": lambda delta, _a, _b, _c: self.set_clockevent(delta),
            "HALT": self.hcall_halt,
            "SET_PMD": lambda pmd, idx, _a, _b: pt.set_pmd(pmd, idx),
            "SET_PTE": pt.set_pte,
            "SET_PGD": lambda top, idx, _a, _b: pt.set_pgd(top, idx),
            "LOAD_TLS": lambda gpa, _cpu, _a, _b: self.segments.load_tls(gpa),
            "NOTIFY": lambda gpa, _a, _b, _c: self.notify(gpa),
            "LOAD_GDT_ENTRY": lambda i, lo, hi, _: self.segments.load_gdt_entry(i, lo, hi),
            "LOAD_GDT": lambda gpa, n, _a, _b: self.segments.load_gdt(gpa, n),
            "FLUSH_ASYNC": self.hcall_nop,
            "SEND_INTERRUPTS": self.hcall_nop,
            # G0's devices (launcher/dma/): the bus hooks them at install.
            "BIND_DMA": lambda key, dmas, packed, _: self.on_bind_dma(key, dmas, packed),
            "SEND_DMA": lambda key, dma, _a, _b: self.on_send_dma(key, dma),
        }
        # Built once from the generation's numbers: dispatch is one dict
        # lookup per exit.
        self.hypercalls: dict[int, H.Handler] = {
            number: duties[duty] for number, duty in generation.calls.items()}
        # Which registers carry arg1..arg4 (generations.py); the common
        # case is read inline in do_hypercall.
        self.args_from_ebx = generation.arg_registers == (EBX, ECX, EDX, ESI)
        self.arg_slots = generation.arg_registers
        self.absent_args = (0,) * (4 - len(self.arg_slots))
        self.trap_handlers: dict[int, Callable[[], None]] = {
            LGUEST_TRAP_ENTRY: self.do_hypercall,
            7: self.on_device_not_available,
            13: self.on_general_protection,
            14: self.on_page_fault,
            KICK_VECTOR: self.on_host_interrupt,
        }
        if generation.vmcall:
            # `vmcall` reaches us as #UD (host/vmcall.py), so 6 is never direct.
            self.trap_handlers[6] = self.on_invalid_opcode
            self.traps.never_direct = self.traps.never_direct | {6}
        # The Launcher's side: NOTIFY values the Host does not handle itself.
        self.on_notify: Callable[[int], None] = lambda gpa: None
        # G0's DMA calls, which the DMA bus answers; BIND_DMA's result goes
        # back to the guest in eax.
        self.on_bind_dma: Callable[[int, int, int], int] = self.no_dma_bus
        self.on_send_dma: Callable[[int, int], None] = self.no_dma_bus
        # Tests and the Launcher may hook the port-I/O emulation.
        self.port_in: Callable[[int, int], int] | None = None
        # Returns False to refuse the write: the guest then gets the #GP.
        self.port_out: Callable[[int, int, int], bool | None] | None = None
        # G3: loads and stores to device windows above RAM, which KVM
        # decoded for us: (gpa, width, value or None for a read) -> read value.
        self.on_mmio: Callable[[int, int, int | None], int] | None = None
        self.mmio_kind: Callable[[int], str] | None = None   # names them for --stats

    # -- ending a run ----------------------------------------------------------
    def kill(self, reason: str) -> None:
        if self.outcome is None:
            self.outcome = Outcome("killed", reason)

    def finish(self, kind: str, message: str) -> None:
        if self.outcome is None:
            self.outcome = Outcome(kind, message)

    # -- the loop --------------------------------------------------------------
    def run(self) -> Outcome:
        vcpu = self.machine.vcpu
        io = vcpu.io
        exit_port = self.image.SW_EXIT_PORT
        fault_port = self.image.SW_FAULT_PORT
        handle_trap = self.handle_trap
        handle_mmio = self.handle_mmio
        if self.recorder is not None:
            handle_trap = self.recorder.wrap(self, handle_trap)
            handle_mmio = self.recorder.wrap_mmio(self, handle_mmio)
        # The loop below runs once per exit: the shim's run call and the
        # constants it compares against are bound to locals once (the same
        # shape as launcher-bench's bare Python loop, which it is measured
        # against).
        run_vcpu, shim = lib.shim_vcpu_run, vcpu.shim
        exit_io, mmio = lib.KVM_EXIT_IO, lib.KVM_EXIT_MMIO
        signal, stopped = lib.SHIM_RUN_SIGNAL, lib.SHIM_RUN_STOPPED
        at_exit = True     # the vCPU sits right after the Switcher's `out`
        words, i_emergency = self.requests.words, self.fast.i_emerg_n
        try:
            while self.outcome is None:
                try:
                    # Only at an exit is the register page the guest's state;
                    # after a signal the vCPU is wherever it was interrupted.
                    if at_exit:
                        self.prepare_resume()
                    reason = run_vcpu(shim)
                    if words[i_emergency]:      # early console bytes first
                        self.fast.flush_emergency()
                    at_exit = reason == exit_io and io.port == exit_port
                    if at_exit:
                        handle_trap()
                    elif reason == mmio:
                        handle_mmio()
                    elif reason == signal:
                        self.signals += 1       # Python's handlers have run
                    elif reason == stopped:
                        self.finish("killed", "stopped")  # stop() set the real outcome
                    elif reason < 0:
                        raise KvmError("KVM_RUN", -reason)
                    else:
                        self.unusual_exit(reason, fault_port)
                except GuestFault as fault:
                    self.kill(str(fault))
        finally:
            self.shutdown()
        return self.outcome

    def shutdown(self) -> None:
        """Stop the Host's threads; the run is over. Page faults the
        Switcher reflected never exited: --stats lists them apart."""
        self.fast.flush_emergency()           # console bytes the Switcher still holds
        self.fast_faults = self.fast.count
        self.in_vm.update({"page faults reflected": self.fast_faults,
                           "system calls delivered": self.fast.syscalls,
                           "port I/O, cli and CPUID answered": self.fast.gps,
                           "SET_PTE": self.fast.ptes})
        if self.clock_vm.on:
            self.in_vm.update(self.clock_vm.counts())
        if self.recorder is not None:
            self.recorder.in_vm.update(self.in_vm)
        if self.clock is not None:
            self.clock.stop()
            self.clock = None


    def stop(self, kind: str, message: str) -> None:
        """From another thread: end the run now, even if the guest never
        exits again (it may be spinning with interrupts off)."""
        self.finish(kind, message)
        self.interrupts.stop()
        self.machine.vcpu.stop()

    def prepare_resume(self) -> None:
        # Runs before every resume: attribute lookups are kept to a minimum.
        self._clear_kick()
        clock = self.clock_vm
        if clock.on:
            clock.take()
            self.deliver_interrupts()
            clock.hand_back()
            clock.halt_if_idle()
        else:
            self.deliver_interrupts()
        self.fast.publish_state()
        self.validate_frame()
        self.requests.publish()

    def deliver_interrupts(self) -> None:
        if self.interrupts.pending:
            self.interrupts.deliver()

    def validate_frame(self) -> None:
        """Never iret into anything but ring 1 or 3 with IF on and IOPL 0,
        and never restore a selector that names the Host's segments."""
        r = self.regs
        cs, ss = r[CS], r[SS]
        if (cs & 3) + (ss & 3) not in (2, 6) or (cs ^ ss) & 3:
            raise GuestFault(f"refusing to resume the guest with cs {cs:#x} ss {ss:#x}")
        r[EFLAGS] = (r[EFLAGS] | X86_EFLAGS_IF) & _EFLAGS_KEEP
        valid = VALID_DATA_SELECTORS
        if r[DS] not in valid or r[ES] not in valid or r[FS] not in valid or r[GS] not in valid:
            for name, i in (("ds", DS), ("es", ES), ("fs", FS), ("gs", GS)):
                if r[i] not in valid:
                    raise GuestFault(f"refusing to resume the guest with {name} {r[i]:#x}")

    def handle_trap(self) -> None:
        trapnum = self.regs[TRAPNUM]
        self.trap_counts[trapnum] += 1
        if trapnum == LGUEST_TRAP_ENTRY:      # the common case, first
            self.do_hypercall()
            return
        handler = self.trap_handlers.get(trapnum)
        if handler is not None:
            handler()
        elif trapnum >= 32 and trapnum != self.traps.syscall_vector:
            self.on_host_interrupt()
        else:
            self.traps.reflect(trapnum)

    def handle_mmio(self) -> None:
        """A load or store outside every memory slot. KVM decoded it and
        will finish it (a load, with the data we leave in kvm_run) at the
        next KVM_RUN. The vCPU is mid-instruction, not at the Switcher's
        exit, so the register page is not the guest's state now."""
        vcpu = self.machine.vcpu
        self.mmio_exits += 1
        addr, width, value = vcpu.mmio_access()
        if self.on_mmio is None or width not in (1, 2, 4):
            raise GuestFault(f"guest accessed {addr:#x} ({width} bytes), outside its memory")
        if value is not None:
            self.on_mmio(addr, width, value)
        else:
            vcpu.mmio_complete_read(self.on_mmio(addr, width, None))

    def unusual_exit(self, reason: int, fault_port: int) -> None:
        vcpu = self.machine.vcpu
        if reason == lib.KVM_EXIT_IO and vcpu.io.port == fault_port:
            raise GuestFault(self.switcher_fault_message())
        if reason == lib.KVM_EXIT_SHUTDOWN:
            raise GuestFault("the guest triple-faulted (the CPU shut down)")
        if reason == lib.KVM_EXIT_IO:
            raise GuestFault(f"unexpected port I/O to {vcpu.io.port:#x} from the VM")
        detail = ""
        if reason == lib.KVM_EXIT_INTERNAL_ERROR:
            internal = lib.shim_run_internal(vcpu.run_page)
            data = " ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 4)))
            rip = vcpu.get_regs().rip
            detail = f" (suberror {internal.suberror}, data {data}, eip {rip:#x})"
        raise GuestFault(f"unexpected KVM exit {EXIT_NAMES.get(reason, reason)}{detail}")

    def switcher_fault_message(self) -> str:
        fault = self.requests.take_fault()
        if fault is None:
            return "the Switcher reported a fault but recorded none"
        vector, errcode, eip = fault
        doing = "handling a trap"
        if vector == 8:
            doing = "handling a trap"
            vector_text = "a double fault (the fault's own gate leads to the guest)"
        else:
            vector_text = f"trap {vector}"
        for label, what in (("restore_gs", "restoring gs"), ("restore_fs", "restoring fs"),
                            ("restore_ds", "restoring ds"), ("restore_es", "restoring es"),
                            ("restore_iret", "returning to the guest (iret)")):
            if eip == self.image.symbols[label]:
                doing = what
        return (f"fault inside the Switcher while {doing}: {vector_text}, error code "
                f"{errcode:#x} at {self.switcher_place(eip)} (a bad selector or frame "
                "in the guest's saved state)")

    def switcher_place(self, eip: int) -> str:
        """``label+offset`` of a Switcher address, from switcher.elf's symbols."""
        image = self.image
        code_end = image.SW_BASE + len(image.code)
        best = max(((addr, name) for name, addr in image.symbols.items()
                    if image.SW_BASE <= addr <= eip < code_end and not name.startswith("SW_")),
                   default=None)
        return f"{best[1]}+{eip - best[0]:#x}" if best else f"{eip:#x}"

    # -- hypercalls ------------------------------------------------------------
    def do_hypercall(self) -> None:
        r = self.regs
        number = r[EAX]
        self.hypercall_counts[number] += 1
        if self.lguest_data is None:
            if number != H.LHCALL_LGUEST_INIT:
                raise GuestFault(f"{H.name_of(number)} before LGUEST_INIT")
        else:
            # Queued calls first: they were made before this one.
            self.async_ring.drain()
        handler = self.hypercalls.get(number)
        if handler is None:
            raise GuestFault(f"unknown hypercall {number}")
        if self.args_from_ebx:
            handler(r[EBX], r[ECX], r[EDX], r[ESI])
        else:
            result = handler(*(r[i] for i in self.arg_slots), *self.absent_args)
            if result is not None:          # BIND_DMA (G0) answers in eax
                r[EAX] = result

    def dispatch(self, number: int, a1: int, a2: int, a3: int, a4: int) -> None:
        handler = self.hypercalls.get(number)
        if handler is None:
            raise GuestFault(f"unknown hypercall {number}")
        handler(a1, a2, a3, a4)

    def hcall_init(self, gpa: int, *_: int) -> None:
        """LGUEST_INIT (docs/abi.md §3.4): learn where lguest_data lives
        and fill in what the Host owes the guest there."""
        if self.lguest_data is not None:
            raise GuestFault("LGUEST_INIT called twice")
        data = LguestData(self.memory, gpa, self.layout)
        data.set("tsc_khz", self.machine.tsc_khz)
        layout = self.layout
        if layout.syscall_vec is not None:
            syscall_vec = data.get("syscall_vec")
            if syscall_vec != 0x80:
                raise GuestFault(f"LGUEST_INIT: unsupported system call vector {syscall_vec:#x}")
        if layout.kernel_address is not None:
            # (2.6.23 has no such field: the Session knows it from the image.)
            self.kernel_address = data.get("kernel_address")
        if self.kernel_address >= self.image.SW_BASE:
            raise GuestFault(f"LGUEST_INIT: kernel address {self.kernel_address:#x} is inside "
                             "the Switcher's reserved region")
        if layout.guestid is not None:
            self.memory.set_u16(gpa + layout.guestid, self.guestid)
        if layout.noirq_start is not None:
            self.noirq = (data.get("noirq_start"), data.get("noirq_end"))
        else:
            self.noirq_iret = data.get("noirq_iret")
        # The top 4 MiB (PDE 1023; PMD 510-511 with PAE) is the Switcher's,
        # whatever the generation (G1's Host reserved only 2 MiB with PAE;
        # the guest keeps out of whatever we say).
        data.set("reserve_mem", 0x100000000 - self.image.SW_BASE)
        self.set_wallclock(data)
        self.lguest_data = data
        self.async_ring.attach()
        self.fast.attach()
        self.clock_vm.attach()
        if self.generation.host_boot_tables:
            self.install_boot_tables(data)
        if self.generation.vmcall_site_known:
            vmcall.patch_known_sites(self)
        self.clock = ClockEvent(self)
        self.interrupts.on_held_back = self.clock.wake

    def install_boot_tables(self, data: LguestData) -> None:
        """G1 (docs/abi.md §1.5): the guest goes on from INIT at its virtual
        addresses, on page tables the Host built, and keeps their address
        in lguest_data.pgdir."""
        pt = self.pagetables
        if pt.pae is None:
            pt.pae = self.generation.may_be_pae and boottables.image_is_pae(
                self.memory, *self.kernel_range())
        top = boottables.build(self.memory, self.machine.layout.ram_size,
                               self.boot_tables_below, pt.pae, self.kernel_address)
        data.set("pgdir", top)
        pt.new_pgtable(top)

    def kernel_range(self) -> tuple[int, int]:
        """The unpacked kernel's pages, within RAM below the boot tables."""
        start, end = self.kernel_image
        return start, min(end, self.boot_tables_below)

    def set_wallclock(self, data: LguestData) -> None:
        ns = time.time_ns()
        data.set_time(ns // 1_000_000_000, ns % 1_000_000_000)
        if self.clock_vm.on:
            self.clock_vm.rebase(ns)

    def hcall_shutdown(self, gpa: int, how: int, *_: int) -> None:
        """SHUTDOWN: poweroff ("Power down"), a panic (its text) or, with
        LGUEST_SHUTDOWN_RESTART, a reboot. lguest read exactly 128 bytes.

        A restart happens even when the message cannot be read: Linux 3.x's
        `reboot -f` passes __pa(NULL) (0x40000000), and the original Host,
        which killed the guest for the bad read, still restarted it."""
        try:
            raw = self.memory.read(gpa, 128, "SHUTDOWN message")[:127]
        except GuestFault as bad:
            if how != LGUEST_SHUTDOWN_RESTART:
                raise
            self.finish("restart", f"(no readable message: {bad})")
            return
        message = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        if how == LGUEST_SHUTDOWN_RESTART:
            self.finish("restart", message)
        elif message == "Power down":
            self.finish("poweroff", message)
        else:
            self.finish("crash", message)

    def notify(self, value: int) -> None:
        """NOTIFY: an address with a registered eventfd wakes its device
        thread and the guest goes straight on; any other goes to the
        Launcher (early console, device status)."""
        if not self.notify_map.signal(value):
            self.on_notify(value)

    def set_stack(self, ss: int, esp: int, pages: int) -> None:
        """SET_STACK: the ring-1 stack for traps from ring 3 (the TSS's
        ss1:esp1). Its pages must be mapped writable right now."""
        if ss & 3 != 1:
            raise GuestFault(f"SET_STACK: stack segment {ss:#x} is not ring 1")
        if pages > 2:
            raise GuestFault(f"SET_STACK: {pages} stack pages (at most 2)")
        for i in range(pages):
            try:
                self.translate((esp - 1 - i * PAGE) & 0xFFFFFFFF, write=True)
            except GuestFault as exc:
                raise GuestFault(f"SET_STACK: bad stack page: {exc}") from None
        self.ss1, self.esp1 = ss, esp
        self.machine.set_guest_stack(ss, esp)
        self.fast.update()

    def load_idt_entry(self, vector: int, low: int, high: int, _unused: int = 0) -> None:
        self.traps.load_idt_entry(vector, low, high)
        if vector == 14 or vector == self.traps.syscall_vector:
            self.fast.update()
        elif vector == 32 and self.clock_vm.on:
            self.clock_vm.update_tick_gate()

    def set_ts(self, wanted: int) -> None:
        """TS: the guest's lazy-FPU wish for CR0.TS."""
        self.ts_wanted = bool(wanted)
        self.requests.set_ts(self.ts_wanted)

    def set_clockevent(self, delta_ns: int) -> None:
        if self.clock_vm.on:
            self.clock_vm.set_clockevent(delta_ns)
        else:
            self.clock.set(delta_ns)

    def hcall_halt(self, *_: int) -> None:
        if self.clock_vm.on:
            # The clock interrupt lives in KVM now, where a Python sleep
            # would never hear it: delivery runs next, and with nothing to
            # deliver the Switcher halts (ClockInVm.halt_if_idle).
            self.interrupts.halted = True
        else:
            self.interrupts.halt()

    def no_dma_bus(self, *_args: int) -> int:
        raise GuestFault("a DMA hypercall, but this guest has no DMA devices")

    def hcall_nop(self, *_args: int) -> None:
        """FLUSH_ASYNC and SEND_INTERRUPTS: their work is the side effects
        every hypercall and every resume already have."""

    # -- traps -----------------------------------------------------------------
    def on_invalid_opcode(self) -> None:
        """#UD: a G1 guest's `vmcall` becomes `int $0x1f; nop` and runs
        again as a hypercall (host/vmcall.py); any other #UD is the guest's."""
        if not vmcall.rewrite_at_eip(self):
            self.traps.reflect(6)

    def on_host_interrupt(self) -> None:
        """A kick or other host interrupt: nothing to do but reach the
        delivery point in prepare_resume."""

    def on_page_fault(self) -> None:
        """Hardware already walked the guest's tables: the fault is the
        guest's. Tell it the address and pass the fault on."""
        self.last_cr2 = self.requests.cr2
        if self.lguest_data is not None:
            self.lguest_data.set("cr2", self.last_cr2)
        self.traps.reflect(14)

    def on_device_not_available(self) -> None:
        """#NM: if the guest did not ask for TS, the Host set it for no one:
        clear it and go on. Otherwise the guest's lazy-FPU handler runs."""
        if not self.ts_wanted:
            self.requests.set_ts(False)
            return
        self.traps.reflect(7)

    def on_general_protection(self) -> None:
        if self.regs[ERRCODE] == 0 and (self.emulate_io() or self.emulate_cpuid()
                                        or self.emulate_read_cr4() or self.vmcall_gp()):
            return
        self.traps.reflect(13)

    def vmcall_gp(self) -> bool:
        """Some CPUs raise #GP(0), not #UD, for a `vmcall` outside VMX
        (the original Host saw both; QEMU's emulated SVM does this)."""
        return self.generation.vmcall and vmcall.rewrite_at_eip(self)

    def emulate_read_cr4(self) -> bool:
        """`mov %cr4, reg` at ring 1 reads 0, as lguest's read_cr4 does.
        Linux 4.0-4.7 read cr4 through the unparavirtualized
        native_read_cr4_safe before the guest has an IDT (cr4_init_shadow),
        so without this every such kernel dies on its first instructions."""
        r = self.regs
        if (r[CS] & 3) != 1:
            return False
        insn = self.read_guest_code(r[EIP], 3)
        if insn[:2] != b"\x0f\x20" or insn[2] & 0xF8 != 0xE0 or insn[2] & 7 == 4:
            return False                     # not mod 11 / reg 4 (cr4), or into esp
        r[_MODRM_REGS[insn[2] & 7]] = 0
        r[EIP] += 3
        return True

    def emulate_cpuid(self) -> bool:
        """CPUID, when the Machine had to make it fault (machine.py,
        svm_without_nrips): answer from the table KVM was given."""
        if not self.machine.cpuid_faulting:
            return False
        r = self.regs
        if self.read_guest_code(r[EIP], 2) != b"\x0f\xa2":
            return False
        leaf, sub = r[EAX], r[ECX]
        for e in self.machine.cpuid:
            if e.function == leaf and (e.index == sub or not e.flags & 1):
                r[EAX], r[EBX], r[ECX], r[EDX] = e.eax, e.ebx, e.ecx, e.edx
                break
        else:
            r[EAX] = r[EBX] = r[ECX] = r[EDX] = 0
        r[EIP] += 2
        return True

    def emulate_io(self) -> bool:
        """lguest's #GP(0) emulation of in/out at ring 1: reads give all ones,
        writes are dropped, and `cli` is skipped (docs/abi.md §6.6)."""
        r = self.regs
        if (r[CS] & 3) != 1:
            return False
        eip = r[EIP]
        insn = self.read_guest_code(eip, 3)
        size, at = 4, 0
        if insn[0] == 0x66:
            size, at = 2, 1
        op = insn[at]
        if op == 0xFA:                       # cli: the guest's IF is virtual
            r[EIP] = eip + at + 1
            return True
        if op in (0xE4, 0xE5, 0xE6, 0xE7):   # in/out with an imm8 port
            port, length = insn[at + 1], at + 2
        elif op in (0xEC, 0xED, 0xEE, 0xEF):  # in/out with the port in dx
            port, length = r[EDX] & 0xFFFF, at + 1
        else:
            return False
        if not op & 1:
            size = 1
        if op & 2:                           # out
            if self.port_out is not None and \
                    self.port_out(port, size, r[EAX] & ((1 << (8 * size)) - 1)) is False:
                return False                 # refused: the guest gets its #GP
        else:
            mask = (1 << (8 * size)) - 1
            value = self.port_in(port, size) if self.port_in is not None else mask
            r[EAX] = (r[EAX] & ~mask) | (value & mask)
        r[EIP] = eip + length
        return True

    # -- guest memory through guest addresses -----------------------------------
    def translate(self, vaddr: int, write: bool = False) -> int:
        """Guest virtual -> guest physical, through the guest's page tables."""
        return self.pagetables.translate(vaddr, write)

    def read_guest_code(self, vaddr: int, length: int) -> bytes:
        """Bytes at a guest virtual address; a second page that is not mapped
        reads as zeros, as lguest's instruction fetch did."""
        out = bytearray()
        while length:
            chunk = min(length, PAGE - (vaddr & (PAGE - 1)))
            try:
                out += self.memory.read(self.translate(vaddr), chunk, "instruction fetch")
            except GuestFault:
                if not out:
                    raise
                out += bytes(length)
                break
            vaddr, length = vaddr + chunk, length - chunk
        return bytes(out)

    def push(self, sp: int, value: int) -> int:
        """Push one word onto the guest stack at virtual ``sp``."""
        sp = (sp - 4) & 0xFFFFFFFF
        self.memory.set_u32(self.translate(sp, write=True), value, "guest stack")
        return sp

    # -- virtual interrupt flag (lguest_data.irq_enabled) -------------------------
    def guest_irqs_enabled(self) -> bool:
        data = self.lguest_data
        return data is not None and bool(data.get("irq_enabled") & X86_EFLAGS_IF)

    def disable_guest_irqs(self) -> None:
        if self.lguest_data is not None:
            self.lguest_data.set("irq_enabled", 0)
