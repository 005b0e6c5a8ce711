"""The Switcher region: its layout (from switcher.elf's symbols) and contents.

native/switcher.S is the one place the layout is written down; this module
loads the linked ELF with pyelftools and exposes every SW_* symbol, the
entry-stub addresses, and typed views of the pieces Python maintains:

- ``gdt`` / ``idt``: the real GDT and IDT (u64 descriptors), written by the
  Host through its own mapping while the guest sees them read-only;
- ``tss``: the TSS (esp0 points at the top of the register page);
- ``regs``: the 18-word ``struct lguest_regs`` at the top of the register page;
- the request area (cr3, flushes, invlpg list, TS) the Switcher carries out
  before it resumes the guest.

Next: launcher/machine.py puts this region into the VM.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache

from elftools.elf.elffile import ELFFile

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SWITCHER_ELF = os.path.join(DATA_DIR, "switcher.elf")

PAGE = 4096

# struct lguest_regs, in 32-bit words (docs/abi.md §6.1).
EAX, EBX, ECX, EDX, ESI, EDI, EBP, GS, FS, DS, ES = range(11)
TRAPNUM, ERRCODE, EIP, CS, EFLAGS, ESP, SS = range(11, 18)
REG_NAMES = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "gs", "fs", "ds", "es",
             "trapnum", "errcode", "eip", "cs", "eflags", "esp", "ss")
NREGS = len(REG_NAMES)


@dataclass(frozen=True)
class SwitcherImage:
    """What the linked switcher.elf tells us."""
    symbols: dict[str, int]
    code: bytes            # .text, to be copied to SW_BASE

    def __getattr__(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise AttributeError(name) from None

    def entry(self, vector: int) -> int:
        """Address of the Switcher's entry stub for ``vector``."""
        return self.symbols["switcher_entries"] + 16 * vector


@lru_cache(maxsize=None)
def load_image(path: str = SWITCHER_ELF) -> SwitcherImage:
    if not os.path.exists(path):
        from .errors import UserError
        raise UserError(f"the Switcher ({path}) is missing: rebuild it with "
                        "scripts/install-deps")
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        symbols = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
        text = elf.get_section_by_name(".text")
        code = text.data()
        if text["sh_addr"] != symbols["SW_BASE"]:
            raise RuntimeError("switcher.elf is not linked at SW_BASE")
    image = SwitcherImage(symbols, code)
    if len(code) > image.SW_GDT - image.SW_BASE:
        raise RuntimeError("Switcher code overlaps the GDT page")
    return image


class RequestArea:
    """The requests Python leaves in the register page for the Switcher."""

    def __init__(self, image: SwitcherImage, words: memoryview) -> None:
        base = image.SW_REGPAGE
        self.words = words                      # u32 view of the whole page
        self.i_flags = (image.SW_REQ_FLAGS - base) // 4
        self.i_cr3 = (image.SW_REQ_CR3 - base) // 4
        self.i_ninvlpg = (image.SW_REQ_NINVLPG - base) // 4
        self.i_invlpg = (image.SW_REQ_INVLPG - base) // 4
        self.i_cr2 = (image.SW_EXIT_CR2 - base) // 4
        self.i_fault_valid = (image.SW_FAULT_VALID - base) // 4
        self.i_fault_vector = (image.SW_FAULT_VECTOR - base) // 4
        self.i_fault_errcode = (image.SW_FAULT_ERRCODE - base) // 4
        self.i_fault_eip = (image.SW_FAULT_EIP - base) // 4
        self.invlpg_max = image.SW_REQ_INVLPG_MAX
        self.LOAD_CR3 = image.REQ_LOAD_CR3
        self.FLUSH = image.REQ_FLUSH
        self.INVLPG = image.REQ_INVLPG
        self.SET_TS = image.REQ_SET_TS
        self.CLEAR_TS = image.REQ_CLEAR_TS
        self.ENABLE_PAE = image.REQ_ENABLE_PAE
        self.ARM_TIMER = image.REQ_ARM_TIMER
        self.STAMP = image.REQ_STAMP
        self.HALT = image.REQ_HALT
        self.i_tmict = (image.SW_REQ_TMICT - base) // 4
        self.pending = 0
        self.invlpgs: list[int] = []
        self.cr3 = 0

    def load_cr3(self, cr3: int) -> None:
        self.pending |= self.LOAD_CR3
        self.cr3 = cr3

    def enable_pae(self, cr3: int) -> None:
        self.pending |= self.ENABLE_PAE | self.LOAD_CR3
        self.cr3 = cr3

    def flush_all(self) -> None:
        self.pending |= self.FLUSH

    def invlpg(self, vaddr: int) -> None:
        # Past the list's capacity a full flush is cheaper than a second exit.
        if len(self.invlpgs) >= self.invlpg_max:
            self.pending |= self.FLUSH
        else:
            self.pending |= self.INVLPG
            self.invlpgs.append(vaddr & 0xFFFFFFFF)

    def set_ts(self, on: bool) -> None:
        self.pending &= ~(self.SET_TS | self.CLEAR_TS)
        self.pending |= self.SET_TS if on else self.CLEAR_TS

    def arm_timer(self, ns: int) -> None:
        """The clock in the VM: set the APIC timer to ``ns`` (0 stops it)."""
        self.pending |= self.ARM_TIMER
        self.words[self.i_tmict] = ns & 0xFFFFFFFF

    def arm_timer_before(self, ns: int) -> None:
        """arm_timer(ns), unless this resume already arms it sooner."""
        if not (self.pending & self.ARM_TIMER and 0 < self.words[self.i_tmict] <= ns):
            self.arm_timer(ns)

    def stamp(self) -> None:
        """Take the TSC now as the base of the Switcher's wall clock."""
        self.pending |= self.STAMP

    def halt(self) -> None:
        """Halt in the Switcher instead of resuming the guest."""
        self.pending |= self.HALT

    def publish(self) -> None:
        """Write the requests for the coming resume. Always writes the flags
        word, so nothing the guest may have scribbled there is carried out."""
        w = self.words
        flags = self.pending
        if flags:
            w[self.i_cr3] = self.cr3
            if self.invlpgs:
                n = len(self.invlpgs)
                w[self.i_ninvlpg] = n
                w[self.i_invlpg:self.i_invlpg + n] = _u32_array(self.invlpgs)
                self.invlpgs.clear()
            self.pending = 0
        w[self.i_flags] = flags

    @property
    def cr2(self) -> int:
        return self.words[self.i_cr2]

    def take_fault(self) -> tuple[int, int, int] | None:
        """(vector, errcode, eip) of a fault inside the Switcher, if any."""
        w = self.words
        if not w[self.i_fault_valid]:
            return None
        w[self.i_fault_valid] = 0
        return w[self.i_fault_vector], w[self.i_fault_errcode], w[self.i_fault_eip]


def _u32_array(values: list[int]) -> memoryview:
    return memoryview(struct.pack(f"<{len(values)}I", *values)).cast("I")
