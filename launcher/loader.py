"""Loading ELF images into guest memory.

A vmlinux-style ELF (docs/abi.md §1.3): each PT_LOAD segment's file bytes
go to guest-physical ``p_paddr``; the rest of it stays zero; the entry point
is ``e_entry``, a physical address on i386. bzImages and the zero page are
launcher/bootparams.py's.
"""
from __future__ import annotations

import io
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


def load_elf_bytes(memory: GuestMemory, path: str, data: bytes, *, limit: int | None = None,
                   want_symbols: bool = False) -> LoadedImage:
    """Load ELF ``data`` (read from ``path``) below ``limit`` (default: all
    of guest memory)."""
    limit = memory.size if limit is None else limit
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_machine"] == "EM_X86_64" or elf.elfclass == 64:
            raise UserError(f"{path} is a 64-bit kernel; lguest guests are 32-bit (i386)")
        if elf["e_type"] != "ET_EXEC" or elf["e_machine"] != "EM_386":
            raise UserError(f"{path} is not an i386 executable ELF image "
                            f"({elf['e_type']}, {elf['e_machine']})")
        end = 0
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD":
                continue
            paddr, filesz, memsz = seg["p_paddr"], seg["p_filesz"], seg["p_memsz"]
            if paddr + memsz > limit:
                raise UserError(f"{path} does not fit in guest memory: a segment ends at "
                                f"{paddr + memsz:#x}, memory ends at {limit:#x} "
                                "(give the guest more with --mem)")
            chunk = seg.data()[:filesz]
            if len(chunk) < filesz:
                raise UserError(f"{path} is truncated")
            memory.write(paddr, chunk)
            end = max(end, paddr + memsz)
        if end == 0:
            raise UserError(f"{path} has nothing to load")
        symbols: dict[str, int] = {}
        if want_symbols:
            symtab = elf.get_section_by_name(".symtab")
            if symtab is not None:
                symbols = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
        return LoadedImage(elf["e_entry"], end, symbols)
    except (ELFError, EOFError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a valid ELF image ({exc})") from None


def load_elf(memory: GuestMemory, path: str, *, want_symbols: bool = False) -> LoadedImage:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    return load_elf_bytes(memory, path, data, want_symbols=want_symbols)
