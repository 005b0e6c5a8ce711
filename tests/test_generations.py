"""What differs between lguest releases (launcher/generations.py), and the
Host duties only G1 (Linux 2.6) has: its hypercall conventions, its async
ring, LOAD_GDT, the boot page tables the Host builds, and `vmcall`."""
import struct

import pytest

from fakes import FakeMachine
from launcher import generations as G
from launcher.errors import GuestFault
from launcher.host import Host, boottables, vmcall
from launcher.switcher import CS, EAX, EBX, ECX, EDX, EIP, ESI, SS, EFLAGS, TRAPNUM

LDATA = 0x1000
MIB = 1 << 20


@pytest.mark.parametrize("version,gen", [
    ("2.6.23", G.G0), ("2.6.23.17", G.G0), ("2.6.24", G.G1_2_6_24), ("2.6.25", G.G1_2_6_25), ("2.6.29.6", G.G1_2_6_25), ("2.6.30", G.G1_2_6_30),
    ("2.6.31", G.G1_2_6_31), ("2.6.33.20", G.G1_2_6_31), ("2.6.34", G.G1_2_6_34),
    ("2.6.39.3", G.G1_2_6_34), ("3.0.1", G.GEN_G2), ("3.19.8", G.GEN_G2),
    ("4.1.52", G.GEN_G3), ("4.13.16", G.GEN_G3), ("", G.GEN_G2)])
def test_each_release_has_one_generation(version, gen):
    assert G.for_version(version) is gen


def test_the_layouts_match_the_abi_tables():
    # docs/abi.md §4: sizeof(struct lguest_data) per generation.
    assert (G.G0_DATA.size, G.G1_EARLY.size, G.G1.size, G.G2.size, G.G3.size) == (
        1128, 1136, 1396, 1392, 1388)
    # the ring: 64 status bytes, then 64 entries, then reserve_mem
    for gen in G.GENERATIONS:
        d = gen.data
        assert d.hcalls == d.hcall_status + 64
        assert d.reserve_mem == d.hcalls + 64 * gen.ring.size


def g1_host(gen, ram=32 * MIB, pae=None):
    m = FakeMachine(ram)
    d = gen.data
    if d.syscall_vec is not None:
        m.memory.set_u32(LDATA + d.syscall_vec, 0x80)
        m.memory.set_u32(LDATA + d.kernel_address, 0xC0000000)
    m.memory.write(LDATA + d.hcall_status, b"\xff" * 64)
    h = Host(m, generation=gen, pae=pae)
    m.regs[CS], m.regs[SS], m.regs[EFLAGS] = 0x61, 0x69, 0x202
    return h


def call(h, number, regs):
    r = h.regs
    r[TRAPNUM], r[EAX] = 0x1F, number
    for slot, value in regs.items():
        r[slot] = value
    h.handle_trap()


def test_2_6_23_init_fills_in_its_own_fields():
    """G0's lguest_data has no kernel_address or syscall_vec to check, and a
    guestid for the Host to fill in (its network card's MAC)."""
    h = g1_host(G.G0)
    h.kernel_address, h.guestid = 0xC0000000, 0x1234
    d = G.G0_DATA
    h.memory.set_u32(LDATA + d.noirq_start, 0xC0100010)
    h.memory.set_u32(LDATA + d.noirq_end, 0xC0100020)
    call(h, 1, {EDX: LDATA, EBX: 0, ECX: 0})
    m = h.memory
    assert m.u16(LDATA + d.guestid) == 0x1234
    assert m.u32(LDATA + d.reserve_mem) == 0x100000000 - h.image.SW_BASE
    assert m.u32(LDATA + d.tsc_khz) == h.machine.tsc_khz
    assert h.noirq == (0xC0100010, 0xC0100020) and h.kernel_address == 0xC0000000
    assert m.u32(LDATA + d.time) > 0


def test_2_6_23_calls_are_its_own():
    calls = G.G0.calls
    assert (calls[2], calls[3], calls[12], calls[13], calls[15]) == (
        "SHUTDOWN", "LOAD_GDT", "BIND_DMA", "SEND_DMA", "SET_PGD")
    assert 17 not in calls and 18 not in calls and G.G0.bus == "dma"


def test_2_6_23_power_off_is_its_crash_call():
    h = g1_host(G.G0)
    call(h, 1, {EDX: LDATA, EBX: 0, ECX: 0})
    h.memory.write(0x3000, b"Power down\0")
    call(h, 2, {EDX: 0x3000, EBX: 0, ECX: 0})
    assert h.outcome.kind == "poweroff"


def test_linear_mode_maps_page_offset_for_2_6_23():
    h = g1_host(G.G0)
    pt = h.pagetables
    assert pt.translate(0x5000) == 0x5000
    with pytest.raises(GuestFault):
        pt.translate(0xC0005000)
    pt.linear_alias = 0xC0000000
    assert pt.translate(0xC0005000) == 0x5000 and pt.translate(0x5000) == 0x5000
    with pytest.raises(GuestFault, match="not mapped"):
        pt.translate(0xC0000000 + 64 * MIB)


def test_2_6_25_passes_arguments_in_edx_ebx_ecx():
    h = g1_host(G.G1_2_6_25)
    call(h, 1, {EDX: LDATA, EBX: 0, ECX: 0})              # INIT: arg1 in edx
    assert h.lguest_data is not None and h.lguest_data.gpa == LDATA
    seen = []
    h.hypercalls[5] = lambda *a: seen.append(a)            # FLUSH_TLB
    call(h, 5, {EDX: 1, EBX: 2, ECX: 3, ESI: 4})
    assert seen == [(1, 2, 3, 0)]                          # no fourth argument


def test_2_6_25_ring_entries_are_call_arg2_arg3_arg1():
    h = g1_host(G.G1_2_6_25)
    call(h, 1, {EDX: LDATA})
    d = G.G1_EARLY
    seen = []
    h.hypercalls[5] = lambda *a: seen.append(a)
    entry = LDATA + d.hcalls + 16 * 0
    h.memory.write(entry, struct.pack("<4I", 5, 22, 33, 11))
    h.memory.set_u8(LDATA + d.hcall_status, 0)
    call(h, 0, {})                                         # FLUSH_ASYNC drains it
    assert seen == [(11, 22, 33, 0)]
    assert h.memory.u8(LDATA + d.hcall_status) == 0xFF


def test_a_guest_without_irq_pending_never_has_it_written():
    h = g1_host(G.G1_2_6_30)
    call(h, 1, {EBX: LDATA})
    before = h.memory.read(LDATA, G.G1_EARLY.size)
    h.interrupts.pending = 1 << 3
    h.lguest_data.set("blocked_interrupts", 0)
    h.lguest_data.set("irq_enabled", 0)                   # held back
    h.deliver_interrupts()
    assert h.interrupts.held_back
    assert h.memory.read(LDATA, G.G1_EARLY.size) == before   # offset 20 is the ring's


def test_load_gdt_takes_the_whole_table():
    h = g1_host(G.G1_2_6_25)
    call(h, 1, {EDX: LDATA})
    code = 0x00CFBA000000FFFF                              # flat ring-1 code
    table = 0x3000
    h.memory.write(table, struct.pack("<32Q", *([0] * 12 + [code] + [0] * 19)))
    call(h, 3, {EDX: table, EBX: 32})
    assert h.segments.guest_gdt[12] == code
    with pytest.raises(GuestFault, match="more than the 32"):
        call(h, 3, {EDX: table, EBX: 33})


def test_g1_init_builds_the_boot_tables_and_loads_them():
    ram = 32 * MIB
    h = g1_host(G.G1_2_6_31, ram, pae=False)
    h.boot_tables_below = ram - 2 * MIB                    # an initrd above
    call(h, 1, {EBX: LDATA})
    top = ram - 2 * MIB - 4096
    assert h.lguest_data.get("pgdir") == top
    assert h.pagetables.cr3 == top
    m = h.memory
    pde0 = m.u32(top)
    assert pde0 & 0xFFF == 0x7 and m.u32(top + 4 * 768) == pde0      # identity and alias
    assert m.u32(top + 4 * 1023) == h.machine.switcher_pde()
    # RAM page 0x1234 through the kernel's alias
    assert h.translate(0xC1234000) == 0x1234000
    assert h.translate(0x00005000) == 0x5000


def test_g1_pae_boot_tables():
    ram = 32 * MIB
    h = g1_host(G.G1_2_6_34, ram, pae=True)
    call(h, 1, {EBX: LDATA})
    top = ram - 4096
    m = h.memory
    assert m.u64(top) & 0xFFF == 1 and m.u64(top + 24) == m.u64(top)
    assert h.translate(0xC0ABC000) == 0xABC000


def test_a_pae_kernel_image_is_told_by_its_boot_pdpt():
    m = FakeMachine(32 * MIB).memory
    assert not boottables.image_is_pae(m, MIB, 32 * MIB)
    pdpt, pmd = 0x1200000, 0x1500000
    m.write(pdpt, struct.pack("<4Q", pmd | 1, 0, 0, pmd | 1))      # 3G/1G split
    assert boottables.image_is_pae(m, MIB, 32 * MIB)
    assert not boottables.image_is_pae(m, 0x1300000, 32 * MIB)     # outside the kernel
    m.write(pdpt, struct.pack("<4Q", pmd | 0x67, 0, 0, pmd | 1))   # a PDE-like entry: no
    assert not boottables.image_is_pae(m, MIB, 32 * MIB)


def test_no_room_for_boot_tables_kills():
    with pytest.raises(GuestFault, match="no room"):
        boottables.build(FakeMachine(4 * MIB).memory, 4 * MIB, 0x101000, False, 0xC0000000)


def test_vmcall_becomes_int_0x1f_and_runs_again():
    h = g1_host(G.G1_2_6_31)
    site = 0x2000
    h.memory.write(site, vmcall.VMCALL)
    r = h.regs
    r[TRAPNUM], r[EIP] = 6, site                           # #UD before INIT: linear mode
    h.handle_trap()
    assert h.memory.read(site, 3) == vmcall.INT_1F_NOP and r[EIP] == site
    assert h.vmcall_rewrites == 1
    # any other #UD is the guest's own (here: no handler, so it dies)
    h.memory.write(site, b"\x0f\x0b\x90")
    with pytest.raises(GuestFault, match="trap 6"):
        h.handle_trap()


def test_vmcall_from_user_mode_is_not_a_hypercall():
    h = g1_host(G.G1_2_6_31)
    h.memory.write(0x2000, vmcall.VMCALL)
    r = h.regs
    r[TRAPNUM], r[EIP], r[CS], r[SS] = 6, 0x2000, 0x73, 0x7B
    with pytest.raises(GuestFault, match="trap 6"):
        h.handle_trap()
    assert h.memory.read(0x2000, 3) == vmcall.VMCALL


def test_send_interrupts_is_rewritten_at_init():
    ram = 32 * MIB
    h = g1_host(G.G1_2_6_34, ram, pae=False)
    site = 0x1234567
    h.memory.write(site, vmcall.SEND_INTERRUPTS)
    call(h, 1, {EBX: LDATA})
    assert h.memory.read(site + 6, 3) == vmcall.INT_1F_NOP
    assert h.vmcall_rewrites == 1


def test_vector_6_is_never_a_direct_trap_where_vmcall_is_used():
    assert 6 in g1_host(G.G1_2_6_34).traps.never_direct
    assert 6 not in g1_host(G.GEN_G2).traps.never_direct


def test_the_switcher_answers_no_hypercall_whose_arguments_it_would_misread():
    for gen, expected in ((G.G1_2_6_25, 0), (G.G1_2_6_30, 1), (G.G1_2_6_34, 1), (G.GEN_G2, 1)):
        h = g1_host(gen)
        call(h, 1, {EDX: LDATA, EBX: LDATA})        # INIT's argument in either place
        fast = h.fast
        assert fast.words[fast.index["SW_HCALL_ON"]] == expected, gen.releases


def test_stats_name_each_call_by_the_guests_own_numbering():
    from launcher.host.trace import exit_kind
    assert exit_kind(0x1F, 3, G.G1_2_6_25.calls) == "LHCALL_LOAD_GDT"
    assert exit_kind(0x1F, 15, G.G1_2_6_25.calls) == "LHCALL_SET_PGD"
    assert exit_kind(0x1F, 3, G.GEN_G2.calls) == "hypercall 3"


@pytest.mark.parametrize("gen,refused", [(G.G1_2_6_30, True), (G.G1_2_6_31, True),
                                         (G.G1_2_6_34, False)])
def test_a_kvm_that_keeps_vmcall_refuses_the_releases_that_need_it(gen, refused):
    """On Intel (or a KVM before 5.19) `vmcall` never reaches us: one
    sentence before the guest starts, for the releases that make every
    call with it; 2.6.34 on run (their one site is rewritten at INIT)."""
    from launcher.errors import UserError
    from launcher.run import GuestConfig, Session

    class IntelMachine:
        def trap_vmcall(self):
            return "on this GenuineIntel CPU KVM answers `vmcall` itself"

    session = Session.__new__(Session)
    session.generation, session.config = gen, GuestConfig(kernel="bzImage")
    if refused:
        with pytest.raises(UserError, match="every hypercall with `vmcall`.*GenuineIntel"):
            session.pass_vmcall_on(IntelMachine(), "2.6.32 (test)")
    else:
        session.pass_vmcall_on(IntelMachine(), "2.6.39.3 (test)")


def test_call_numbers_by_duty():
    from launcher.generations import G1_2_6_25, GEN_G2
    assert GEN_G2.call_number("SEND_INTERRUPTS") == 19
    assert G1_2_6_25.call_number("SEND_INTERRUPTS") is None      # 2.6.31 brought it
    assert G1_2_6_25.call_number("HALT") == 10
