"""Building the VM an lguest guest runs in (docs/architecture.md, "The VM the Host builds").

One VM, one vCPU, 32-bit protected mode with paging:

- slot 0: guest RAM at guest-physical 0 (plus the device pages above it);
- slot 1: the read-only part of the Switcher region at 0xFFC00000 (code,
  GDT, IDT, TSS) — the guest can map those pages but never rewrite them;
- slot 2: the writable part (register page, the Host's page tables).

The vCPU starts at ring 0 at the Switcher's resume path with esp on the
register page, so the very first KVM_RUN "returns" into the guest exactly as
every later resume does: pop the frame, iret to ring 1.

Next: launcher/host/core.py runs the exit loop on this machine.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from . import descriptors as D
from .fastpaths import fast_clock_default
from .kvm import CpuidEntry, GuestRegion, Kvm, KvmError, Vcpu, Vm, lib_cap
from .memory import GuestMemory
from .switcher import (CS, DS, EFLAGS, EIP, ES, ESI, ESP, FS, GS, NREGS, PAGE, SS,
                       RequestArea, SwitcherImage, load_image)

# GDT slots and selectors (docs/abi.md §2.1).
GDT_ENTRIES = 32
LGUEST_CS_ENTRY, LGUEST_DS_ENTRY = 10, 11
GUEST_CS_ENTRY, GUEST_DS_ENTRY = 12, 13
GDT_ENTRY_TSS, GDT_ENTRY_DOUBLEFAULT_TSS = 16, 31
GUEST_CS, GUEST_DS = 0x61, 0x69          # entries 12/13 with RPL 1
TSS_SELECTOR = GDT_ENTRY_TSS * 8
TSS_LIMIT = 0x67
IDT_ENTRIES = 256

LGUEST_TRAP_ENTRY = 0x1F                 # the hypercall vector
KICK_VECTOR = 0x20                       # what a kick injects (never a guest gate)
X86_EFLAGS_IF = 0x200
ERRCODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17))

# Control registers are the Host's: the guest cannot write them
# (docs/architecture.md, "The VM the Host builds").
CR0_PE, CR0_MP, CR0_TS, CR0_ET, CR0_NE = 0x1, 0x2, 0x8, 0x10, 0x20
CR0_WP, CR0_AM, CR0_PG = 0x10000, 0x40000, 0x80000000
CR0_GUEST = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
CR4_PSE, CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 0x10, 0x20, 0x200, 0x400
CR4_LINEAR = CR4_PSE | CR4_OSFXSR | CR4_OSXMMEXCPT

# Page-table entry bits.
PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80

MSR_MISC_FEATURES_ENABLES = 0x140
MSR_MISC_FEATURES_CPUID_FAULT = 1

# The local APIC in KVM, for the clock in the VM (docs/architecture.md).
MSR_IA32_APICBASE = 0x1B
APICBASE_BSP, APICBASE_EXTD, APICBASE_EN = 1 << 8, 1 << 10, 1 << 11
APIC_DEFAULT_BASE = 0xFEE00000
APIC_SVR, APIC_LVTT, APIC_LVTERR, APIC_TDCR = 0xF0, 0x320, 0x370, 0x3E0
APIC_SVR_ENABLE, APIC_LVT_MASKED, APIC_TDCR_DIVIDE_BY_1 = 0x100, 1 << 16, 0xB
CPUID1_ECX_X2APIC = 1 << 21

# CPUID bits hidden from a paravirt guest (docs/abi.md §12.9).
CPUID1_ECX_HIDE = (1 << 21) | (1 << 26) | (1 << 27) | (1 << 31)   # x2APIC XSAVE OSXSAVE HYPERVISOR
CPUID1_EDX_HIDE = 1 << 11                                         # SEP: no sysenter


@dataclass
class Layout:
    """Where things are in guest-physical memory."""
    ram_size: int        # what the guest's e820 says
    slot0_size: int      # RAM plus device pages (the G1/G2 pfn_limit)

    @property
    def pfn_limit(self) -> int:
        return self.slot0_size // PAGE


def filter_cpuid(entries: list[CpuidEntry]) -> list[CpuidEntry]:
    """No hypervisor leaves (a guest must not mistake us for KVM), no x2APIC,
    no sysenter, no XSAVE (CR4.OSXSAVE stays off)."""
    out = []
    for e in entries:
        if 0x40000000 <= e.function <= 0x4FFFFFFF:
            continue
        if e.function == 1:
            e = CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx,
                           e.ecx & ~CPUID1_ECX_HIDE, e.edx & ~CPUID1_EDX_HIDE)
        out.append(e)
    return out


def with_x2apic(entries: list[CpuidEntry]) -> list[CpuidEntry]:
    """The table KVM is given when its LAPIC runs in x2APIC mode: KVM
    allows that mode only if CPUID leaf 1 says x2APIC. Linux guests mask the
    bit themselves (docs/abi.md §12.9), and where the Host answers CPUID it
    answers from the filtered table."""
    return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx,
                       e.ecx | CPUID1_ECX_X2APIC, e.edx) if e.function == 1 else e
            for e in entries]


def svm_without_nrips(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Is this host an AMD SVM one without next-RIP save (QEMU's software
    SVM, our testbed)? There KVM skips an intercepted CPUID by emulating the
    instruction, and its emulator rejects PAE PDPT entries whose accessed bit
    that same emulated CPU has set: a ring-3 CPUID in a PAE guest ends in
    KVM_EXIT_INTERNAL_ERROR."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "svm" in flags and "nrip_save" not in flags
    except OSError:
        pass
    return False


def cpu_vendor(entries: list[CpuidEntry]) -> str:
    for e in entries:
        if e.function == 0:
            return struct.pack("<III", e.ebx, e.edx, e.ecx).decode("ascii", "replace")
    return ""


class Machine:
    """The VM, its memory and its single vCPU, ready to run an lguest guest."""

    def __init__(self, ram_size: int, *, device_pages: int = 0, kvm_path: str = "/dev/kvm",
                 kvm: Kvm | None = None, apic: bool | None = None) -> None:
        if ram_size % PAGE or ram_size <= 0:
            raise ValueError("RAM size must be a positive multiple of 4096")
        self.image: SwitcherImage = load_image()
        self.layout = Layout(ram_size, ram_size + device_pages * PAGE)
        if self.layout.slot0_size > self.image.SW_BASE:
            raise ValueError("guest memory would overlap the Switcher region")
        self.kvm = kvm or Kvm(kvm_path)
        self.vm: Vm = self.kvm.create_vm()
        self._setup_memory()
        self._setup_switcher_region()
        # The LAPIC must be asked for before the vCPU exists.
        self.apic_in_kernel = False
        self.apic_note = "the clock in the VM is off (--no-fast-clock)"
        if fast_clock_default() if apic is None else apic:
            self.apic_note = self._enable_apic()
        self.vcpu: Vcpu = self.vm.create_vcpu(0, KICK_VECTOR)
        cpuid = filter_cpuid(self.kvm.supported_cpuid())
        self.cpuid = cpuid              # what the guest is told (Host.emulate_cpuid)
        self.vendor = cpu_vendor(cpuid)
        self.vcpu.set_cpuid(with_x2apic(cpuid) if self.apic_in_kernel else cpuid)
        if self.apic_in_kernel:
            self._setup_lapic()
        # Where KVM cannot skip CPUID without its emulator (svm_without_nrips),
        # make CPUID outside ring 0 fault (KVM's emulated CPUID faulting) and
        # let the Host answer it from the same table (Host.emulate_cpuid).
        self.cpuid_faulting = svm_without_nrips()
        self.cpuid_in_switcher = 0        # entries of the Switcher's copy (host/fastpath.py)
        if self.cpuid_faulting:
            self.vcpu.set_msrs({MSR_MISC_FEATURES_ENABLES: MSR_MISC_FEATURES_CPUID_FAULT})
            self._write_cpuid_table()
        self.tsc_khz = self.vcpu.tsc_khz()
        self._setup_vcpu()

    def _write_cpuid_table(self) -> None:
        """The table CPUID is answered from, for the Switcher too (its
        #GP fast path), in the TSS page past what the CPU reads. A table
        too big for it stays Python's alone."""
        img = self.image
        if len(self.cpuid) > img.SW_CPUID_MAX:
            return
        at = (img.SW_CPUID_TABLE - img.SW_TSS) // 4
        for i, e in enumerate(self.cpuid):
            self.tss[at + 7 * i:at + 7 * i + 7] = memoryview(struct.pack(
                "<7I", e.function, e.index, e.flags & 1, e.eax, e.ebx, e.ecx, e.edx)).cast("I")
        self.cpuid_in_switcher = len(self.cpuid)

    # -- `vmcall` (host/vmcall.py) ---------------------------------------------
    def trap_vmcall(self) -> str | None:
        """Make a guest's `vmcall` an #UD the Switcher sees, as under the
        original Host. None if it now is; otherwise why it cannot be."""
        if self.vendor not in ("AuthenticAMD", "HygonGenuine"):
            return (f"on this {self.vendor or 'unknown'} CPU KVM answers `vmcall` itself "
                    "(it is Intel's own hypercall instruction)")
        quirk = lib_cap("KVM_X86_QUIRK_FIX_HYPERCALL_INSN")
        if not self.kvm.check_extension(lib_cap("KVM_CAP_DISABLE_QUIRKS2")) & quirk:
            return "this host's KVM (before Linux 5.19) always turns `vmcall` into its own hypercall"
        try:
            self.vm.enable_cap(lib_cap("KVM_CAP_DISABLE_QUIRKS2"), quirk, "KVM_CAP_DISABLE_QUIRKS2")
        except KvmError as exc:
            return f"this host's KVM refused to pass `vmcall` on ({exc})"
        return None

    # -- the local APIC --------------------------------------------------------
    def _enable_apic(self) -> str:
        """Put a local APIC in KVM (and nothing else of a PC's interrupt
        hardware) if this KVM can; says what happened, for --verbose."""
        kvm = self.kvm
        for cap, name in ((lib_cap("KVM_CAP_SPLIT_IRQCHIP"), "KVM_CAP_SPLIT_IRQCHIP"),
                          (lib_cap("KVM_CAP_SIGNAL_MSI"), "KVM_CAP_SIGNAL_MSI")):
            if not kvm.check_extension(cap):
                return f"the clock in the VM is off: this KVM lacks {name}"
        try:
            self.vm.enable_split_irqchip()
        except KvmError as exc:
            return f"the clock in the VM is off: {exc}"
        self.apic_in_kernel = True
        # A halted vCPU now sleeps in KVM, which by default polls for a
        # while before it really sleeps: CPU burnt at every idle tick.
        # An idle guest should cost nothing (KVM_CAP_HALT_POLL, Linux 5.16+).
        if kvm.check_extension(lib_cap("KVM_CAP_HALT_POLL")):
            try:
                self.vm.enable_cap(lib_cap("KVM_CAP_HALT_POLL"), 0)
            except KvmError:
                pass
        return "the clock in the VM is on (KVM's local APIC, x2APIC mode)"

    def _setup_lapic(self) -> None:
        """x2APIC mode, so the Switcher reaches the APIC with `wrmsr` (no
        mapping, no instruction KVM must decode); software-enabled; the
        timer one-shot on SW_TIMER_VECTOR counting nanoseconds (KVM's APIC
        bus cycle is 1 ns; divide by 1). Kicks become MSIs to it."""
        img = self.image
        self.vcpu.set_msrs({MSR_IA32_APICBASE:
                            APIC_DEFAULT_BASE | APICBASE_EN | APICBASE_EXTD | APICBASE_BSP})
        regs = self.vcpu.get_lapic()
        for offset, value in ((APIC_SVR, APIC_SVR_ENABLE | img.SW_SPURIOUS_VECTOR),
                              (APIC_LVTT, img.SW_TIMER_VECTOR),
                              (APIC_LVTERR, APIC_LVT_MASKED),
                              (APIC_TDCR, APIC_TDCR_DIVIDE_BY_1)):
            struct.pack_into("<I", regs, offset, value)
        self.vcpu.set_lapic(regs)
        self.vcpu.kick_by_msi()
        self.fast_params[(img.SW_APIC_ON - img.SW_FAST) // 4] = 1

    # -- memory ------------------------------------------------------------
    def _setup_memory(self) -> None:
        img = self.image
        self.ram = GuestRegion(self.layout.slot0_size)
        self.memory = GuestMemory(self.ram.map)
        self.sw_ro = GuestRegion(img.SW_RO_END - img.SW_BASE)
        self.sw_rw = GuestRegion(img.SW_RW_END - img.SW_RO_END)
        self.vm.set_memory_region(0, 0, self.ram)
        self.vm.set_memory_region(1, img.SW_BASE, self.sw_ro, readonly=True)
        self.vm.set_memory_region(2, img.SW_RO_END, self.sw_rw)

    def _ro_view(self, addr: int, size: int) -> memoryview:
        off = addr - self.image.SW_BASE
        return self.sw_ro.view[off:off + size]

    def _rw_view(self, addr: int, size: int) -> memoryview:
        off = addr - self.image.SW_RO_END
        return self.sw_rw.view[off:off + size]

    # -- the Switcher region -------------------------------------------------
    def _setup_switcher_region(self) -> None:
        img = self.image
        self._ro_view(img.SW_BASE, len(img.code))[:] = img.code
        # Typed views the Host keeps using while the guest runs.
        self.gdt = self._ro_view(img.SW_GDT, GDT_ENTRIES * 8).cast("Q")
        self.idt = self._ro_view(img.SW_IDT, IDT_ENTRIES * 8).cast("Q")
        self.tss = self._ro_view(img.SW_TSS, PAGE).cast("I")
        self.regpage = self._rw_view(img.SW_REGPAGE, PAGE).cast("I")
        first = (img.SW_REGS - img.SW_REGPAGE) // 4
        self.regs = self.regpage[first:first + NREGS]
        self.requests = RequestArea(img, self.regpage)
        self.fast_params = self._ro_view(img.SW_FAST, img.SW_FAST_END - img.SW_FAST).cast("I")
        self._setup_gdt()
        self._setup_tss()
        self._setup_idt()
        self._setup_page_tables()

    def _setup_gdt(self) -> None:
        # Every descriptor has its accessed bit preset: the GDT is read-only
        # to the CPU (a KVM_MEM_READONLY slot) and it must never need to write.
        flat = 0xFFFFF
        g = self.gdt
        g[LGUEST_CS_ENTRY] = D.segment(0, flat, 0xB, 0)
        g[LGUEST_DS_ENTRY] = D.segment(0, flat, 0x3, 0)
        g[GUEST_CS_ENTRY] = D.segment(0, flat, 0xB, 1)
        g[GUEST_DS_ENTRY] = D.segment(0, flat, 0x3, 1)
        g[GDT_ENTRY_TSS] = D.segment(self.image.SW_TSS, TSS_LIMIT, 0x9, 0, system=True,
                                     db=False, granular=False)

    def _setup_tss(self) -> None:
        img = self.image
        t = self.tss
        t[1] = img.SW_REGPAGE + PAGE          # esp0: top of the register page
        t[2] = LGUEST_DS_ENTRY * 8            # ss0
        t[25] = (TSS_LIMIT + 1) << 16         # I/O bitmap past the limit: no ports

    def set_guest_stack(self, ss1: int, esp1: int) -> None:
        """The ring-1 stack a trap from ring 3 switches to (SET_STACK)."""
        self.tss[3] = esp1
        self.tss[4] = ss1

    def _setup_idt(self) -> None:
        for vector in range(IDT_ENTRIES):
            self.idt[vector] = self.host_gate(vector, 0)
        # The hypercall gate: reachable from ring 1 only (docs/abi.md §3.1).
        self.idt[LGUEST_TRAP_ENTRY] = self.host_gate(LGUEST_TRAP_ENTRY, 1)

    def host_gate(self, vector: int, dpl: int) -> int:
        """A gate into the Switcher's stub for ``vector``. Stubs of vectors
        with a CPU error code must never be reached by a software `int`
        (the frame would be a word short), so their DPL is always 0."""
        if vector in ERRCODE_VECTORS:
            dpl = 0
        return D.gate(self.image.entry(vector), LGUEST_CS_ENTRY * 8, D.GATE_INTERRUPT, dpl)

    def _setup_page_tables(self) -> None:
        img = self.image
        # The Switcher's own page table maps the region virtual == physical.
        # Read-only pages are mapped without RW as well: CR0.WP makes ring 0
        # honour that, so even the Switcher cannot scribble on its code.
        npages = (img.SW_RW_END - img.SW_BASE) // PAGE
        pt = self._rw_view(img.SW_PT, PAGE).cast("I")
        pae_pt = self._rw_view(img.SW_PAE_PT, PAGE).cast("Q")
        for i in range(npages):
            addr = img.SW_BASE + i * PAGE
            flags = PTE_P | PTE_A | (PTE_RW | PTE_D if addr >= img.SW_RO_END else 0)
            pt[i] = addr | flags
            pae_pt[i] = addr | flags
        # "Linear mode" (docs/abi.md §1.5): until the first NEW_PGTABLE the
        # guest sees RAM at virtual == physical, supervisor-only, through
        # 4 MiB pages, plus the Switcher in the top slot.
        pd = self._rw_view(img.SW_LINEAR_PD, PAGE).cast("I")
        big = 1 << 22
        for i in range((self.layout.slot0_size + big - 1) // big):
            pd[i] = (i * big) | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_PS
        pd[1023] = self.switcher_pde()

    def alias_linear(self, page_offset: int) -> None:
        """Linear mode for Linux 2.6.23 (G0), which starts at its virtual
        addresses: map RAM at ``page_offset`` too, as that Launcher's boot
        page tables did, below the Switcher's slot."""
        big = 1 << 22
        if page_offset % big or not 0 < page_offset < self.image.SW_BASE:
            raise ValueError(f"PAGE_OFFSET {page_offset:#x} cannot be aliased")
        pd = self._rw_view(self.image.SW_LINEAR_PD, PAGE).cast("I")
        first = page_offset // big
        for i in range(min((self.layout.slot0_size + big - 1) // big, 1023 - first)):
            pd[first + i] = pd[i]

    def map_lguest_data(self, gpa: int, size: int) -> int:
        """Map the (at most two) pages holding lguest_data at the Switcher's
        window, in both page-table formats; returns lguest_data's address
        there. The fast page-fault path writes cr2 and irq_enabled through
        it, whatever address space the guest is in."""
        img = self.image
        first = (img.SW_LDATA_WINDOW - img.SW_BASE) // PAGE
        pages = ((gpa & (PAGE - 1)) + size + PAGE - 1) // PAGE
        if pages > 2 or gpa + size > self.layout.slot0_size:
            raise ValueError("lguest_data does not fit the Switcher's window")
        pt = self._rw_view(img.SW_PT, PAGE).cast("I")
        pae_pt = self._rw_view(img.SW_PAE_PT, PAGE).cast("Q")
        for i in range(2):
            frame = (gpa & ~(PAGE - 1)) + i * PAGE
            entry = frame | PTE_P | PTE_RW | PTE_A | PTE_D if i < pages else 0
            pt[first + i] = entry
            pae_pt[first + i] = entry
        return img.SW_LDATA_WINDOW + (gpa & (PAGE - 1))

    def switcher_pde(self) -> int:
        """The non-PAE top-level entry that maps the Switcher (slot 1023)."""
        return self.image.SW_PT | PTE_P | PTE_RW | PTE_A

    def switcher_pae_pmd(self) -> int:
        """The PAE middle-level entry that maps the Switcher. 0xFFC00000 is in
        PDPT slot 3, PMD slot 510 (slot 511 would be 0xFFE00000)."""
        return self.image.SW_PAE_PT | PTE_P | PTE_RW | PTE_A

    # -- the vCPU ------------------------------------------------------------
    def _setup_vcpu(self) -> None:
        img = self.image
        s = self.vcpu.get_sregs()
        _flat(s.cs, LGUEST_CS_ENTRY * 8, 0xB)
        for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
            _flat(seg, LGUEST_DS_ENTRY * 8, 0x3)
        # TR is loaded here, never with `ltr`, which would write the busy bit
        # into the read-only GDT. QEMU's SVM model wants an available TSS type
        # (9); Intel VMX insists on busy (11).
        tr = s.tr
        tr.base, tr.limit, tr.selector = img.SW_TSS, TSS_LIMIT, TSS_SELECTOR
        tr.type = 0xB if "Intel" in self.vendor else 0x9
        tr.present, tr.dpl, tr.db, tr.s, tr.l, tr.g, tr.avl, tr.unusable = 1, 0, 0, 0, 0, 0, 0, 0
        ldt = s.ldt
        ldt.selector, ldt.base, ldt.limit, ldt.type = 0, 0, 0, 2
        ldt.present, ldt.unusable, ldt.s = 0, 1, 0
        s.gdt.base, s.gdt.limit = img.SW_GDT, GDT_ENTRIES * 8 - 1
        s.idt.base, s.idt.limit = img.SW_IDT, IDT_ENTRIES * 8 - 1
        s.cr0 = CR0_GUEST
        s.cr3 = img.SW_LINEAR_PD
        s.cr4 = CR4_LINEAR
        s.efer = 0
        self.vcpu.set_sregs(s)
        r = self.vcpu.get_regs()
        r.rip = img.switcher_resume
        r.rsp = img.SW_REGS
        r.rflags = 0x2
        self.vcpu.set_regs(r)

    def set_start(self, entry: int, **regs: int) -> None:
        """The guest's initial state (docs/abi.md §1.4), then any overrides
        (by register name) a test or loader wants."""
        from .switcher import REG_NAMES
        r = self.regs
        for i in range(NREGS):
            r[i] = 0
        r[EIP], r[CS], r[EFLAGS] = entry, GUEST_CS, 0x202
        r[DS] = r[ES] = r[SS] = GUEST_DS
        r[FS] = r[GS] = r[ESI] = r[ESP] = 0
        for name, value in regs.items():
            r[REG_NAMES.index(name)] = value & 0xFFFFFFFF

    def close(self, keep_kvm: bool = False) -> None:
        """Release the VM; ``keep_kvm`` leaves /dev/kvm open for the next boot."""
        self.vcpu.close()
        self.vm.close()
        # Now that KVM has let go of them: a reboot must not keep the old
        # VM's RAM until Python's cycle collector finds it.
        for region in (self.ram, self.sw_ro, self.sw_rw):
            region.close()
        if not keep_kvm:
            self.kvm.close()


def _flat(seg, selector: int, type_: int) -> None:
    seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, selector, type_
    seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl, seg.unusable = \
        1, 0, 1, 1, 0, 1, 0, 0
