"""The IDT duty and trap delivery (docs/abi.md §6.2-6.4), on a fake machine."""
import pytest

from fakes import FakeMachine
from launcher import descriptors as D
from launcher.errors import GuestFault
from launcher.host import Host
from launcher.switcher import CS, EFLAGS, EIP, ERRCODE, ESP, SS

HANDLER = 0xC0101234


def gate(type_, dpl, present=True, selector=0x60):
    return D.split(D.gate(HANDLER, selector, type_, dpl, present))


def make():
    m = FakeMachine()
    return Host(m), m


@pytest.mark.parametrize("vector", [2, 8, 15, 0x1F])
def test_ignored_vectors(vector):
    h, m = make()
    before = m.idt[vector]
    h.traps.load_idt_entry(vector, *gate(0xF, 3))
    assert m.idt[vector] == before and not h.traps.has_handler(vector)


def test_refusals():
    h, _ = make()
    with pytest.raises(GuestFault, match="past the IDT"):
        h.traps.load_idt_entry(256, *gate(0xF, 0))
    low, high = gate(0xF, 0)
    with pytest.raises(GuestFault, match="gate type 0x5"):
        h.traps.load_idt_entry(3, low, (high & ~0xF00) | 0x500)


def test_selector_is_forced_to_guest_cs():
    h, _ = make()
    h.traps.load_idt_entry(3, *gate(0xF, 3, selector=0x10))
    low, high = h.traps.guest_idt[3]
    assert low >> 16 == 0x61 and D.gate_handler(low, high) == HANDLER


@pytest.mark.parametrize("vector,type_,direct", [
    (0x80, 0xF, True), (3, 0xF, True), (0, 0xF, True),
    (7, 0xF, False), (13, 0xF, False), (14, 0xF, False),
    (3, 0xE, False), (0x80, 0xE, False), (0x81, 0xF, False), (0x20, 0xF, False),
])
def test_direct_trap_selection(vector, type_, direct):
    h, m = make()
    h.traps.load_idt_entry(vector, *gate(type_, 3))
    real_low, real_high = D.split(m.idt[vector])
    goes_direct = D.gate_handler(real_low, real_high) == HANDLER
    assert goes_direct == direct
    if not direct:
        assert D.gate_handler(real_low, real_high) == m.image.entry(vector)


def test_host_gates_keep_the_guests_dpl_except_for_error_code_vectors():
    h, m = make()
    h.traps.load_idt_entry(3, *gate(0xE, 3))
    assert D.gate_dpl(D.split(m.idt[3])[1]) == 3
    h.traps.load_idt_entry(14, *gate(0xE, 3))
    assert D.gate_dpl(D.split(m.idt[14])[1]) == 0


def test_deliver_from_ring1_pushes_eflags_cs_eip_errcode():
    h, m = make()
    h.traps.load_idt_entry(14, *gate(0xE, 0))
    r = m.regs
    r[SS], r[ESP], r[CS], r[EIP], r[EFLAGS], r[ERRCODE] = 0x69, 0x8000, 0x61, 0x1234, 0x202, 6
    h.traps.deliver(14, True)
    assert (r[CS], r[EIP], r[ESP], r[SS]) == (0x61, HANDLER, 0x8000 - 16, 0x69)
    mem = m.memory
    # irq_enabled is off (no lguest_data yet): the pushed IF is clear.
    assert [mem.u32(0x8000 - 4 * i) for i in (1, 2, 3, 4)] == [0x002, 0x61, 0x1234, 6]


def test_deliver_from_ring3_switches_to_the_ring1_stack():
    h, m = make()
    h.traps.load_idt_entry(3, *gate(0xF, 3))
    h.ss1, h.esp1 = 0x69, 0x9000
    r = m.regs
    r[SS], r[ESP], r[CS], r[EIP], r[EFLAGS] = 0x7B, 0x5000, 0x73, 0x4444, 0x302
    h.traps.deliver(3, False)
    assert (r[SS], r[ESP], r[CS], r[EIP]) == (0x69, 0x9000 - 20, 0x61, HANDLER)
    assert [m.memory.u32(0x9000 - 4 * i) for i in range(1, 6)] == \
        [0x7B, 0x5000, 0x102, 0x73, 0x4444]   # stacked IF mirrors irq_enabled (off)
    assert r[EFLAGS] & 0x100 == 0      # TF cleared in the handler


def test_deliver_without_a_handler_kills_with_lguests_message():
    h, m = make()
    m.regs[EIP], m.regs[ERRCODE] = 0x1234, 0
    with pytest.raises(GuestFault, match=r"unhandled trap 6 at 0x1234 \(errcode 0x0\)"):
        h.traps.reflect(6)


def test_deliver_onto_a_stack_outside_memory_kills():
    h, m = make()
    h.traps.load_idt_entry(3, *gate(0xF, 3))
    m.regs[SS], m.regs[ESP] = 0x69, m.memory.size + 0x1000
    with pytest.raises(GuestFault, match="not mapped"):
        h.traps.deliver(3, False)
