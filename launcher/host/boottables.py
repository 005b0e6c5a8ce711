"""G1's boot page tables (docs/abi.md §1.5), which the Host builds.

A Linux 2.6 lguest guest makes its INIT hypercall at physical addresses and
then jumps to its virtual ones at once: it expects the Host to have mapped
all of RAM both at 0 and at PAGE_OFFSET, in real page tables in guest
memory, and to say where in ``lguest_data.pgdir`` (its ``read_cr3`` returns
that). So at INIT the Host writes them just below the initrd (or the end of
RAM): the top-level page highest, the PTE pages below it, and for PAE one
PMD page below those. From Linux 3.x on the guest builds its own.

Whether a G1 kernel is PAE the ABI does not say; ``image_is_pae`` looks for
the one PAE structure such a kernel carries ready-made in its image.
"""
from __future__ import annotations

import struct

from ..errors import GuestFault
from ..memory import GuestMemory

PAGE = 4096
TABLE_FLAGS = 0x7            # present, writable, user: what the original Host wrote
PDPT_PRESENT = 0x1
PAE_PMD_LIMIT = 510          # PMD 510-511 are the Switcher's (pagetables.SWITCHER_PMD)
SWITCHER_PDE = 1023
KERNEL_IMAGE_START = 0x100000     # G1 kernels load at 1 MiB or 16 MiB


def build(memory: GuestMemory, ram: int, below: int, pae: bool, kernel_address: int) -> int:
    """Map [0, ram) at 0 and at ``kernel_address`` in new tables ending at
    ``below`` (page-aligned); the top level's guest-physical address."""
    top = below - PAGE
    pages = ram // PAGE
    per_table = 512 if pae else 1024
    tables = -(-pages // per_table)
    if pae:
        tables = min(tables, PAE_PMD_LIMIT)      # the first GiB, as the original did
    first = top - tables * PAGE - (PAGE if pae else 0)
    if first < KERNEL_IMAGE_START:
        raise GuestFault(f"no room below {below:#x} for the boot page tables of "
                         f"{ram >> 20} MiB of RAM")
    pte_at = top - tables * PAGE
    fmt = "<512Q" if pae else "<1024I"
    for t in range(tables):
        base = t * per_table
        count = min(per_table, pages - base)
        entries = [((base + i) << 12) | TABLE_FLAGS for i in range(count)]
        entries += [0] * (per_table - count)
        memory.write(pte_at + t * PAGE, struct.pack(fmt, *entries))
    top_page = bytearray(PAGE)
    if pae:
        pmd_at = pte_at - PAGE
        pmd = [pte_at + t * PAGE | TABLE_FLAGS for t in range(tables)]
        memory.write(pmd_at, struct.pack("<512Q", *pmd, *[0] * (512 - tables)))
        # The identity map and the kernel's top gigabyte share the PMD page.
        struct.pack_into("<Q", top_page, 0, pmd_at | PDPT_PRESENT)
        struct.pack_into("<Q", top_page, 8 * (kernel_address >> 30), pmd_at | PDPT_PRESENT)
    else:
        alias = kernel_address >> 22
        for t in range(tables):
            pde = pte_at + t * PAGE | TABLE_FLAGS
            struct.pack_into("<I", top_page, 4 * t, pde)
            if alias + t < SWITCHER_PDE:
                struct.pack_into("<I", top_page, 4 * (alias + t), pde)
    memory.write(top, bytes(top_page))
    return top


def image_is_pae(memory: GuestMemory, start: int, end: int) -> bool:
    """A PAE kernel's image holds its boot PDPT ready-made (head_32.S):
    a page-aligned table whose present entries carry nothing but the
    present bit, pointing at consecutive PMD pages, the last entry always
    present (it maps the kernel), the first too (the identity map). No
    non-PAE kernel has a page that starts like that. [start, end) is
    where the kernel lies."""
    view = memory.view
    for at in range(start & ~(PAGE - 1), end - 32, PAGE):
        e = struct.unpack_from("<4Q", view, at)
        if e[0] & 0xFFFFFFFF00000FFF != PDPT_PRESENT or e[3] & 0xFFF != PDPT_PRESENT:
            continue
        pmd = e[0] & ~0xFFF
        if not at < pmd < end:
            continue
        # KPMDS kernel PMDs: e3 is pmd + (KPMDS - 1) pages; e1, e2 follow suit.
        kpmds = ((e[3] & ~0xFFF) - pmd) // PAGE + 1
        expect = {1: (0, 0), 2: (0, pmd | 1), 3: (pmd | 1, pmd + PAGE | 1)}.get(kpmds)
        if expect == (e[1], e[2]):
            return True
    return False
