"""The page-table duty, with hardware paging instead of shadow tables.

Under the original lguest the Host kept shadow page tables. Here nested
paging already isolates guest RAM, so the CPU walks the guest's own tables
and the Host keeps only lguest's *semantics* (docs/architecture.md, "Paging
without shadow tables"):

- NEW_PGTABLE writes the Switcher's entry into the table the guest hands
  over (non-PAE: PDE 1023; PAE: PMD slot 510 under PDPT[3]) and asks the
  Switcher to load cr3. The first one ends "linear mode" and decides PAE.
- SET_PTE / SET_PMD / SET_PGD / FLUSH_TLB: the guest has already written the
  entry; the Host checks it and turns the call into TLB maintenance
  (``invlpg`` or a cr3 reload, which flushes everything since CR4.PGE is off).
- ``translate`` walks the guest's tables (both formats) for the Host's own
  accesses through guest-virtual addresses, setting A/D as the CPU would.

A guest can still write its own page tables at any time without telling us
(it could even map the Switcher's pages). That gains it nothing outside its
own VM: the Host never trusts what it reads back, and KVM isolates the rest.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import GuestFault, GuestMemoryError

if TYPE_CHECKING:
    from .core import Host

PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
PAE_FRAME = 0x000FFFFFFFFFF000
PAE_PDPT_FLAGS = 0x001            # a PAE PDPT entry carries nothing but P...
PAE_PDPT_IGNORED = PTE_A          # ...but nested-paging hardware may set A in it
SWITCHER_PDE = 1023               # non-PAE top-level slot of 0xFFC00000
SWITCHER_PDPTE, SWITCHER_PMD = 3, 510   # PAE: PDPT[3] -> PMD[510]


class PageTables:
    def __init__(self, host: "Host", pae: bool | None = None) -> None:
        self.host = host
        self.memory = host.memory
        self.machine = host.machine
        self.requests = host.requests
        self.pae = pae              # None until the first NEW_PGTABLE decides
        self.cpu_in_pae = False     # linear mode always runs non-PAE
        self.cr3: int | None = None   # None: linear mode
        # G0: linear mode also maps RAM at PAGE_OFFSET (Machine.alias_linear).
        self.linear_alias: int | None = None
        self.reserved_start = host.image.SW_BASE

    # -- PAE detection -------------------------------------------------------
    def looks_like_pdpt(self, top: int) -> bool:
        """A PAE PDPT's entries carry only the present bit (docs/abi.md §1.5);
        a non-PAE page directory's first entries carry 0x067-style flags."""
        entries = [self.memory.u64(top + 8 * i, "page table") for i in range(4)]
        present = [e for e in entries if e]
        return bool(present) and all(e & 0xFFF & ~PAE_PDPT_IGNORED == PAE_PDPT_FLAGS
                                     and e >> 52 == 0 for e in present)

    # -- hypercalls ------------------------------------------------------------
    def new_pgtable(self, top: int) -> None:
        if self.pae is None:
            self.pae = self.looks_like_pdpt(top)
        if top & (0x1F if self.pae else 0xFFF):
            raise GuestFault(f"NEW_PGTABLE: {top:#x} is not a properly aligned page table")
        self.install_switcher(top)
        if self.pae and not self.cpu_in_pae:
            self.requests.enable_pae(top)   # once: the Switcher flips CR4.PAE
            self.cpu_in_pae = True
        else:
            self.requests.load_cr3(top)
        self.cr3 = top
        self.host.fast.update_paging()

    def install_switcher(self, top: int) -> None:
        m = self.memory
        if self.pae:
            pdpte = m.u64(top + 8 * SWITCHER_PDPTE, "PDPT")
            if not pdpte & PTE_P:
                raise GuestFault(f"NEW_PGTABLE: PDPT at {top:#x} does not map the kernel's "
                                 "top gigabyte")
            self.check_pdpte(pdpte)
            m.set_u64((pdpte & PAE_FRAME) + 8 * SWITCHER_PMD, self.machine.switcher_pae_pmd(),
                      "PMD")
        else:
            m.set_u32(top + 4 * SWITCHER_PDE, self.machine.switcher_pde(), "page directory")

    def check_pdpte(self, pdpte: int) -> None:
        if pdpte & 0xFFF & ~(PAE_PDPT_FLAGS | PAE_PDPT_IGNORED) or pdpte >> 52:
            raise GuestFault(f"bad PAE PDPT entry {pdpte:#x}: only the present bit may be set")
        self.check_frame(pdpte & PAE_FRAME, pdpte)

    def check_frame(self, gpa: int, entry: int, limit: int | None = None) -> None:
        limit = self.host.ram_limit if limit is None else limit
        if gpa >= limit:
            raise GuestFault(f"page-table entry {entry:#x} points at {gpa:#x}, beyond "
                             f"guest memory ({self.host.ram_limit:#x}) and its devices")

    def set_pte(self, top: int, vaddr: int, low: int, high: int) -> None:
        if vaddr >= self.reserved_start:
            raise GuestFault(f"SET_PTE at {vaddr:#x}, inside the Switcher's reserved region")
        pte = low | (high << 32 if self.pae else 0)
        if pte & PTE_P:
            if pte & PTE_PS:
                raise GuestFault(f"SET_PTE {pte:#x} at {vaddr:#x}: PSE/PAT bit set")
            # A page may map device registers (G3's BARs); a table may not.
            self.check_frame(pte & (PAE_FRAME if self.pae else 0xFFFFF000), pte,
                             self.host.device_limit)
        # Kernel mappings are shared by every address space; a change to the
        # current one must leave the TLB. Other address spaces hold no TLB
        # entries: every cr3 load flushes everything (CR4.PGE is off).
        if top == self.cr3 or vaddr >= self.host.kernel_address:
            self.requests.invlpg(vaddr)

    def check_table_entry(self, entry: int, what: str) -> None:
        """A present directory entry (PDE or PMD) must point at a page table
        in guest RAM, never at a large page (docs/abi.md §7)."""
        if not entry & PTE_P:
            return
        if entry & PTE_PS:
            raise GuestFault(f"{what} {entry:#x} maps a large page")
        self.check_frame(entry & (PAE_FRAME if self.pae else 0xFFFFF000), entry)

    def set_pmd(self, pmd: int, index: int) -> None:
        if self.pae is False:
            raise GuestFault("SET_PMD from a non-PAE guest")
        if index >= 512:
            raise GuestFault(f"SET_PMD index {index} is past the 512 entries")
        if index != SWITCHER_PMD:
            self.check_table_entry(self.memory.u64(pmd + 8 * index, "PMD"), "SET_PMD entry")
        if index == SWITCHER_PMD and self.cr3 is not None:
            # The guest rewrote the slot that maps us: map us again if that
            # PMD is the one the current PDPT uses for the top gigabyte.
            pdpte = self.memory.u64(self.cr3 + 8 * SWITCHER_PDPTE, "PDPT")
            if pdpte & PAE_FRAME == pmd & PAE_FRAME:
                self.install_switcher(self.cr3)
        self.requests.flush_all()

    def set_pgd(self, top: int, index: int) -> None:
        if self.pae:
            if index >= 4:
                raise GuestFault(f"SET_PGD index {index} is past the 4 PDPT entries")
            pdpte = self.memory.u64(top + 8 * index, "PDPT")
            if pdpte:
                self.check_pdpte(pdpte)
            if index == SWITCHER_PDPTE and pdpte:
                self.install_switcher(top)
        else:
            if index >= 1024:
                raise GuestFault(f"SET_PGD index {index} is past the 1024 entries")
            if index == SWITCHER_PDE:
                self.install_switcher(top)
            else:
                self.check_table_entry(self.memory.u32(top + 4 * index, "page directory"),
                                       "SET_PGD entry")
        # A PAE PDPT is read into the CPU only when cr3 is loaded.
        self.requests.flush_all()

    def flush_tlb(self, _all: int) -> None:
        self.requests.flush_all()

    # -- the walker --------------------------------------------------------------
    def translate(self, vaddr: int, write: bool = False) -> int:
        """Guest virtual -> guest physical in the current address space."""
        vaddr &= 0xFFFFFFFF
        if self.cr3 is None:
            alias = self.linear_alias
            if alias is not None and vaddr >= alias:
                vaddr -= alias
            if vaddr >= self.host.ram_limit:
                raise GuestFault(f"guest address {vaddr:#x} is not mapped (linear mode)")
            return vaddr
        try:
            return self._walk_pae(vaddr, write) if self.pae else self._walk(vaddr, write)
        except GuestMemoryError as exc:
            raise GuestFault(f"page tables for {vaddr:#x} point outside guest memory "
                             f"({exc.addr:#x})") from None

    def _leaf(self, at: int, entry: int, vaddr: int, write: bool, size: int, wide: bool) -> None:
        if not entry & PTE_P:
            raise GuestFault(f"guest address {vaddr:#x} is not mapped")
        if write and not entry & PTE_RW:
            raise GuestFault(f"guest address {vaddr:#x} is mapped read-only")
        new = entry | PTE_A | (PTE_D if write else 0)
        if new != entry:
            (self.memory.set_u64 if wide else self.memory.set_u32)(at, new)

    def _walk(self, vaddr: int, write: bool) -> int:
        m = self.memory
        pde_at = self.cr3 + 4 * (vaddr >> 22)
        pde = m.u32(pde_at, "page directory")
        if not pde & PTE_P:
            raise GuestFault(f"guest address {vaddr:#x} is not mapped")
        if pde & PTE_PS:
            self._leaf(pde_at, pde, vaddr, write, 1 << 22, False)
            return (pde & 0xFFC00000) | (vaddr & 0x3FFFFF)
        pte_at = (pde & 0xFFFFF000) + 4 * ((vaddr >> 12) & 0x3FF)
        pte = m.u32(pte_at, "page table")
        self._leaf(pte_at, pte, vaddr, write, 4096, False)
        return (pte & 0xFFFFF000) | (vaddr & 0xFFF)

    def _walk_pae(self, vaddr: int, write: bool) -> int:
        m = self.memory
        pdpte = m.u64(self.cr3 + 8 * (vaddr >> 30), "PDPT")
        if not pdpte & PTE_P:
            raise GuestFault(f"guest address {vaddr:#x} is not mapped")
        pmd_at = (pdpte & PAE_FRAME) + 8 * ((vaddr >> 21) & 0x1FF)
        pmd = m.u64(pmd_at, "PMD")
        if not pmd & PTE_P:
            raise GuestFault(f"guest address {vaddr:#x} is not mapped")
        if pmd & PTE_PS:
            self._leaf(pmd_at, pmd, vaddr, write, 1 << 21, True)
            return (pmd & PAE_FRAME & ~0x1FFFFF) | (vaddr & 0x1FFFFF)
        pte_at = (pmd & PAE_FRAME) + 8 * ((vaddr >> 12) & 0x1FF)
        pte = m.u64(pte_at, "page table")
        self._leaf(pte_at, pte, vaddr, write, 4096, True)
        return (pte & PAE_FRAME) | (vaddr & 0xFFF)
