"""Loading guest images into guest memory.

A vmlinux-style ELF (lguest-abi.md §1.3): each PT_LOAD segment's file bytes
go to guest-physical ``p_paddr``; the rest of it stays zero; the entry point
is ``e_entry``, a physical address on i386.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .errors import UserError
from .memory import GuestMemory


@dataclass
class LoadedImage:
    entry: int
    end: int                                   # first byte after the image
    symbols: dict[str, int] = field(default_factory=dict)


def load_elf(memory: GuestMemory, path: str, *, want_symbols: bool = False) -> LoadedImage:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_type"] != "ET_EXEC" or elf["e_machine"] != "EM_386":
                raise UserError(f"{path} is not an i386 executable ELF image "
                                f"({elf['e_type']}, {elf['e_machine']})")
            end = 0
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD":
                    continue
                paddr, filesz, memsz = seg["p_paddr"], seg["p_filesz"], seg["p_memsz"]
                if paddr + memsz > memory.size:
                    raise UserError(f"{path} does not fit in guest memory: a segment ends "
                                    f"at {paddr + memsz:#x}, memory ends at {memory.size:#x}")
                memory.write(paddr, seg.data()[:filesz])
                end = max(end, paddr + memsz)
            symbols: dict[str, int] = {}
            if want_symbols:
                symtab = elf.get_section_by_name(".symtab")
                if symtab is not None:
                    symbols = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
            return LoadedImage(elf["e_entry"], end, symbols)
    except (ELFError, OSError) as exc:
        raise UserError(f"cannot load {path}: {exc}") from None
