"""When the Switcher may reflect page faults itself (host/fastpath.py), on
a fake machine: the facts it is given follow INIT, the #PF gate and
SET_STACK, and it is off whenever one is missing or --no-fast-traps."""
import pytest

from fakes import FakeMachine
from fakes import hypercall as hcall
from launcher.host import Host
from launcher.host import hypercalls as H
from launcher.switcher import CS, EFLAGS, SS

LDATA = 0x1FF0              # lguest_data straddles a page boundary


def host(fast=True):
    m = FakeMachine()
    m.memory.set_u32(LDATA + 1388, 0x80)
    m.memory.set_u32(LDATA + 1384, 0xC0000000)
    h = Host(m, fast_traps=fast)
    m.regs[CS], m.regs[SS], m.regs[EFLAGS] = 0x61, 0x69, 0x202
    return h


def field(h, name):
    return h.fast.words[h.fast.index[name]]


def pf_gate(h, handler=0xC0101234, flags=0x8E00):
    hcall(h, H.LHCALL_LOAD_IDT_ENTRY, 14, (0x61 << 16) | (handler & 0xFFFF),
          (handler & 0xFFFF0000) | flags)


@pytest.fixture
def h():
    h = host()
    yield h
    if h.clock:
        h.clock.stop()


def test_off_until_init_and_a_handler(h):
    assert field(h, "SW_FAST_ON") == 0
    hcall(h, H.LHCALL_LGUEST_INIT, LDATA)
    assert field(h, "SW_FAST_ON") == 0                    # no #PF handler yet
    window = h.image.SW_LDATA_WINDOW + (LDATA & 0xFFF)
    assert h.machine.windows == [(LDATA, h.layout.size)]
    assert field(h, "SW_FAST_CR2_AT") == window + 8
    assert field(h, "SW_FAST_IRQ_AT") == window
    pf_gate(h)
    assert field(h, "SW_FAST_ON") == 1
    assert field(h, "SW_FAST_HANDLER") == 0xC0101234 and field(h, "SW_FAST_IGATE") == 1
    assert field(h, "SW_FAST_ESP1") == 0                  # ring-3 faults: slow until SET_STACK
    pf_gate(h, flags=0x8F00)                              # a trap gate
    assert field(h, "SW_FAST_IGATE") == 0
    pf_gate(h, flags=0)                                   # not present: off again
    assert field(h, "SW_FAST_ON") == 0


def test_set_stack_gives_the_ring_1_stack(h):
    hcall(h, H.LHCALL_LGUEST_INIT, LDATA)
    pf_gate(h)
    hcall(h, H.LHCALL_SET_STACK, 0x69, 0x3000, 1)
    assert (field(h, "SW_FAST_SS1"), field(h, "SW_FAST_ESP1")) == (0x69, 0x3000)


def test_no_fast_traps_keeps_it_off():
    h = host(fast=False)
    hcall(h, H.LHCALL_LGUEST_INIT, LDATA)
    pf_gate(h)
    assert field(h, "SW_FAST_ON") == 0
    h.clock.stop()
