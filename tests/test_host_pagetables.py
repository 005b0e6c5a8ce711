"""The page-table duty without KVM: PAE detection, checks, TLB requests and
the walker in both formats."""
import pytest

from fakes import FakeMachine
from launcher.errors import GuestFault
from launcher.host import Host

PD, PT, PDPT, PMD3, PMD0 = 0x10000, 0x11000, 0x12000, 0x13000, 0x14000


def make(pae=None):
    m = FakeMachine()
    h = Host(m, pae=pae)
    h.kernel_address = 0xC0000000
    return h, m


def non_pae_tables(m):
    m.memory.set_u32(PD + 4 * 0x300, PT | 0x67)          # 0xC0000000
    m.memory.set_u32(PT + 4 * 5, 0x30000 | 0x63)          # 0xC0005000 -> 0x30000
    m.memory.set_u32(PT + 4 * 6, 0x31000 | 0x61)          # read-only
    m.memory.set_u32(PD, PT | 0x67)


def pae_tables(m):
    m.memory.set_u64(PDPT, PMD0 | 1)
    m.memory.set_u64(PDPT + 24, PMD3 | 1)
    m.memory.set_u64(PMD3, PT | 0x67)                     # 0xC0000000-0xC01FFFFF
    m.memory.set_u64(PT + 8 * 5, 0x30000 | 0x63)


def test_non_pae_new_pgtable_maps_the_switcher_and_loads_cr3():
    h, m = make()
    non_pae_tables(m)
    h.pagetables.new_pgtable(PD)
    assert h.pagetables.pae is False
    assert m.memory.u32(PD + 4 * 1023) == m.switcher_pde()
    assert h.requests.pending == h.requests.LOAD_CR3 and h.requests.cr3 == PD


def test_pae_is_detected_from_the_pdpt_and_switched_on_once():
    h, m = make()
    pae_tables(m)
    h.pagetables.new_pgtable(PDPT)
    assert h.pagetables.pae is True
    assert m.memory.u64(PMD3 + 8 * 510) == m.switcher_pae_pmd()
    assert h.requests.pending & h.requests.ENABLE_PAE
    h.requests.publish()
    h.pagetables.new_pgtable(PDPT)
    assert not h.requests.pending & h.requests.ENABLE_PAE


def test_no_pae_override_wins_over_detection():
    h, m = make(pae=False)
    pae_tables(m)
    h.pagetables.new_pgtable(PD)
    assert h.pagetables.pae is False


@pytest.mark.parametrize("top", [PD + 4, 0x7FFFF000])
def test_new_pgtable_refuses_misaligned_or_outside(top):
    h, m = make(pae=False)
    with pytest.raises(GuestFault):
        h.pagetables.new_pgtable(top)


def test_walker_non_pae_sets_accessed_and_dirty():
    h, m = make()
    non_pae_tables(m)
    h.pagetables.new_pgtable(PD)
    assert h.translate(0xC0005123, write=True) == 0x30123
    assert m.memory.u32(PT + 4 * 5) & 0x60 == 0x60
    assert h.translate(0xC0006004) == 0x31004
    with pytest.raises(GuestFault, match="read-only"):
        h.translate(0xC0006004, write=True)
    with pytest.raises(GuestFault, match="not mapped"):
        h.translate(0xC0007000)
    with pytest.raises(GuestFault, match="not mapped"):
        h.translate(0x80000000)


def test_walker_pae():
    h, m = make()
    pae_tables(m)
    h.pagetables.new_pgtable(PDPT)
    assert h.translate(0xC0005FFC) == 0x30FFC
    with pytest.raises(GuestFault):
        h.translate(0x40000000)


def test_walker_tables_pointing_outside_memory_kill_with_the_address():
    h, m = make()
    m.memory.set_u32(PD, 0x7FFF0000 | 0x67)
    h.pagetables.new_pgtable(PD)
    with pytest.raises(GuestFault, match="outside guest memory"):
        h.translate(0x1000)


def test_linear_mode_is_identity_below_ram():
    h, m = make()
    assert h.translate(0x1234) == 0x1234
    with pytest.raises(GuestFault):
        h.translate(m.memory.size)


def test_set_pte_checks_and_requests():
    h, m = make()
    non_pae_tables(m)
    h.pagetables.new_pgtable(PD)
    h.requests.publish()
    h.pagetables.set_pte(PD, 0x08048000, 0x30000 | 0x67, 0)
    assert h.requests.invlpgs == [0x08048000]
    h.pagetables.set_pte(PD + 0x1000, 0x08049000, 0, 0)      # another mm: no TLB work
    assert h.requests.invlpgs == [0x08048000]
    h.pagetables.set_pte(PD + 0x1000, 0xC0001000, 0, 0)      # kernel: every mm
    assert h.requests.invlpgs[-1] == 0xC0001000
    with pytest.raises(GuestFault, match="reserved region"):
        h.pagetables.set_pte(PD, 0xFFC01000, 0, 0)
    with pytest.raises(GuestFault, match="PSE/PAT"):
        h.pagetables.set_pte(PD, 0x1000, 0x30000 | 0x81, 0)
    with pytest.raises(GuestFault, match="beyond guest memory"):
        h.pagetables.set_pte(PD, 0x1000, 0x7FFF0000 | 0x1, 0)


def test_pages_may_map_device_registers_but_tables_may_not():
    """G3: a PTE may point at a PCI BAR above RAM (device_limit); a page
    table (PDE) there is still refused."""
    h, m = make()
    non_pae_tables(m)
    h.pagetables.new_pgtable(PD)
    bar = m.memory.size + (1 << 20)
    with pytest.raises(GuestFault, match="beyond guest memory"):
        h.pagetables.set_pte(PD, 0xC8000000, bar | 0x13, 0)
    h.device_limit = bar + 0x1000
    h.pagetables.set_pte(PD, 0xC8000000, bar | 0x13, 0)
    with pytest.raises(GuestFault, match="beyond guest memory"):
        h.pagetables.set_pte(PD, 0xC8001000, (bar + 0x1000) | 0x13, 0)
    m.memory.set_u32(PD + 4 * 5, bar | 0x67)
    with pytest.raises(GuestFault, match="beyond guest memory"):
        h.pagetables.set_pgd(PD, 5)


def test_many_invlpgs_become_one_flush():
    h, m = make()
    for i in range(h.requests.invlpg_max + 5):
        h.requests.invlpg(i << 12)
    assert h.requests.pending & h.requests.FLUSH


def test_set_pgd_and_set_pmd():
    h, m = make()
    non_pae_tables(m)
    h.pagetables.new_pgtable(PD)
    m.memory.set_u32(PD + 4 * 1023, 0)               # the guest clobbers our slot
    h.pagetables.set_pgd(PD, 1023)
    assert m.memory.u32(PD + 4 * 1023) == m.switcher_pde()
    assert h.requests.pending & h.requests.FLUSH
    with pytest.raises(GuestFault, match="1024"):
        h.pagetables.set_pgd(PD, 1024)
    with pytest.raises(GuestFault, match="non-PAE"):
        h.pagetables.set_pmd(PMD3, 0)


def test_pae_set_pgd_and_set_pmd_restore_the_switcher():
    h, m = make()
    pae_tables(m)
    h.pagetables.new_pgtable(PDPT)
    m.memory.set_u64(PMD3 + 8 * 510, 0)
    h.pagetables.set_pmd(PMD3, 510)
    assert m.memory.u64(PMD3 + 8 * 510) == m.switcher_pae_pmd()
    m.memory.set_u64(PDPT + 16, 0x50000 | 0x67)      # not present-only
    with pytest.raises(GuestFault, match="only the present bit"):
        h.pagetables.set_pgd(PDPT, 2)
    with pytest.raises(GuestFault, match="4 PDPT"):
        h.pagetables.set_pgd(PDPT, 4)


def test_pdpt_entries_may_carry_the_accessed_bit_hardware_sets():
    # Found by the own guest's PAE build: the nested-paging walker set A
    # (0x20) in a live PDPT entry, and the next NEW_PGTABLE must accept it.
    h, m = make()
    pae_tables(m)
    m.memory.set_u64(PDPT + 24, PMD3 | 0x21)
    assert h.pagetables.looks_like_pdpt(PDPT)
    h.pagetables.new_pgtable(PDPT)
    assert h.pagetables.pae is True


def test_set_pgd_and_set_pmd_check_the_entry_they_report():
    h, m = make()
    non_pae_tables(m)
    h.pagetables.new_pgtable(PD)
    m.memory.set_u32(PD + 4 * 5, 0x7FFF0000 | 0x67)
    with pytest.raises(GuestFault, match="beyond guest memory"):
        h.pagetables.set_pgd(PD, 5)
    m.memory.set_u32(PD + 4 * 5, 0x400000 | 0xE7)
    with pytest.raises(GuestFault, match="large page"):
        h.pagetables.set_pgd(PD, 5)
    h2, m2 = make()
    pae_tables(m2)
    h2.pagetables.new_pgtable(PDPT)
    m2.memory.set_u64(PMD3 + 8 * 7, 0x7FFF0000 | 0x67)
    with pytest.raises(GuestFault, match="beyond guest memory"):
        h2.pagetables.set_pmd(PMD3, 7)
