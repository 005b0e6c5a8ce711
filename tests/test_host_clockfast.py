"""The clock in the VM (host/clockfast.py) on a fake machine: what Python
publishes for the Switcher, what it takes back at an exit, and how its own
SET_CLOCKEVENT and HALT handlers change when the LAPIC is KVM's."""
import time

import pytest

from fakes import FakeMachine
from fakes import hypercall as hcall
from launcher.errors import GuestFault
from launcher.host import Host
from launcher.host import hypercalls as H
from launcher.switcher import CS, EFLAGS, EIP, ESP, SS

LDATA = 0x1FF0              # lguest_data straddles a page boundary
KSTACK = 0x3000


def host(apic=True):
    m = FakeMachine()
    m.apic_in_kernel = apic
    m.memory.set_u32(LDATA + 1388, 0x80)
    m.memory.set_u32(LDATA + 1384, 0xC0000000)
    h = Host(m)
    r = m.regs
    r[CS], r[SS], r[EFLAGS], r[ESP], r[EIP] = 0x61, 0x69, 0x202, KSTACK, 0x100000
    return h


def param(h, name):
    return h.clock_vm.params[h.clock_vm.p[name]]


def state(h, name):
    return h.clock_vm.state[h.clock_vm.s[name]]


def set_state(h, name, value):
    h.clock_vm.state[h.clock_vm.s[name]] = value


def tick_gate(h, handler=0xC0105678, flags=0x8E00):
    hcall(h, H.LHCALL_LOAD_IDT_ENTRY, 32, (0x61 << 16) | (handler & 0xFFFF),
          (handler & 0xFFFF0000) | flags)


@pytest.fixture
def h():
    h = host()
    hcall(h, H.LHCALL_LGUEST_INIT, LDATA)
    yield h
    h.shutdown()


def flags(h):
    return h.requests.words[h.requests.i_flags]


def test_off_without_the_lapic():
    h = host(apic=False)
    hcall(h, H.LHCALL_LGUEST_INIT, LDATA)
    try:
        assert not h.clock_vm.on and param(h, "SW_CLK_ON") == 0
        # SET_PTE may still be answered in the VM: its checks need the ring.
        assert h.fast.words[h.fast.index["SW_HSTATUS_AT"]] != 0
        hcall(h, H.LHCALL_SET_CLOCKEVENT, 5_000_000)
        assert h.clock.deadline is not None            # Python's own timer
    finally:
        h.shutdown()


def test_init_publishes_where_lguest_data_is(h):
    window = h.image.SW_LDATA_WINDOW + (LDATA & 0xFFF)
    layout = h.layout
    assert param(h, "SW_CLK_ON") == 1
    fast = h.fast.words
    assert fast[h.fast.index["SW_BLOCKED_AT"]] == window + layout.blocked_interrupts
    assert fast[h.fast.index["SW_HSTATUS_AT"]] == window + layout.hcall_status
    assert param(h, "SW_IRQPEND_AT") == window + layout.irq_pending
    assert param(h, "SW_TIME_AT") == window + layout.time
    assert param(h, "SW_NOIRQ_IRET") == 0xFFFFFFFF      # G2: a window, no iret
    # 1 GHz TSC (FakeMachine): one nanosecond per tick, << 24
    assert param(h, "SW_TSC_MULT") == 1 << 24


def test_send_interrupts_is_published_by_its_number(h):
    """The Switcher delivers a held-back IRQ 0 at SEND_INTERRUPTS: the
    call's number as the guest's generation has it."""
    assert param(h, "SW_SENDINT_CALL") == h.generation.call_number("SEND_INTERRUPTS") == 19


def test_the_wall_clock_base_and_its_stamp(h):
    before = time.time_ns()
    h.set_wallclock(h.lguest_data)
    i = h.clock_vm.p["SW_NS_BASE"]
    base = h.clock_vm.params[i] | h.clock_vm.params[i + 1] << 32
    assert before <= base <= time.time_ns()
    h.prepare_resume()
    assert flags(h) & h.requests.STAMP                  # the Switcher reads the TSC then


def test_tick_gate_follows_load_idt_entry(h):
    assert param(h, "SW_TICK_HANDLER") == 0             # no gate 32 yet: Python decides
    tick_gate(h)
    assert param(h, "SW_TICK_HANDLER") == 0xC0105678 and param(h, "SW_TICK_IGATE") == 1
    tick_gate(h, flags=0x8F00)
    assert param(h, "SW_TICK_IGATE") == 0
    tick_gate(h, handler=h.image.SW_BASE + 0x1000)      # into the Switcher: Python refuses
    assert param(h, "SW_TICK_HANDLER") == 0
    with pytest.raises(GuestFault, match="points into the Switcher's region"):
        h.traps.deliver(32, False)


def test_set_clockevent_asks_the_switcher_to_arm_the_timer(h):
    hcall(h, H.LHCALL_SET_CLOCKEVENT, 1_234_567)
    assert h.clock.deadline is None                     # not Python's timer
    h.prepare_resume()
    assert flags(h) & h.requests.ARM_TIMER
    assert h.requests.words[h.requests.i_tmict] == 1_234_567


def test_halt_with_nothing_pending_halts_in_the_switcher(h):
    tick_gate(h)
    start = time.monotonic()
    hcall(h, H.LHCALL_HALT)
    assert time.monotonic() - start < 1                 # Python did not sleep
    h.prepare_resume()
    assert flags(h) & h.requests.HALT
    assert not h.interrupts.halted


def interrupts_off(h):
    """A gate for IRQ 0, nothing masked, the guest's interrupts off."""
    tick_gate(h)
    h.lguest_data.set("blocked_interrupts", 0)
    h.lguest_data.set("irq_enabled", 0)


def test_halt_with_an_irq_pending_delivers_it_with_interrupts_on(h):
    interrupts_off(h)
    h.interrupts.raise_irq(0)
    hcall(h, H.LHCALL_HALT)
    h.prepare_resume()
    assert not flags(h) & h.requests.HALT
    assert h.regs[EIP] == 0xC0105678
    assert h.lguest_data.get("irq_enabled") == 0        # an interrupt gate
    pushed_eflags = h.memory.u32(h.translate(h.regs[ESP] + 8))
    assert pushed_eflags & 0x200                        # HALT is "sti; hlt"


def test_what_the_switcher_left_is_taken_at_the_next_exit(h):
    interrupts_off(h)
    set_state(h, "SW_CLK_PENDING", 1)                   # an IRQ 0 it held back
    set_state(h, "SW_HALTED", 1)                        # ... while halted
    hcall(h, H.LHCALL_SEND_INTERRUPTS)
    h.prepare_resume()
    assert state(h, "SW_CLK_PENDING") == 0 and state(h, "SW_HALTED") == 0
    assert h.regs[EIP] == 0xC0105678                    # delivered, as for a halted guest
    assert not h.interrupts.pending


def test_a_held_back_irq_is_published_for_the_switcher(h):
    interrupts_off(h)
    h.interrupts.raise_irq(3)
    hcall(h, H.LHCALL_FLUSH_ASYNC)
    h.prepare_resume()
    words, image = h.requests.words, h.image
    assert words[(image.SW_HOST_PENDING - image.SW_REGPAGE) // 4] == 1 << 3   # for the Switcher
    assert h.lguest_data.get("irq_pending") == 0x200


def test_a_held_back_tick_goes_back_to_the_switcher(h):
    """IRQ 0 that Python cannot deliver (interrupts off) is the Switcher's
    again: it looks in 2 ms, with no kick and no exit from Python."""
    interrupts_off(h)
    h.interrupts.raise_irq(0)
    hcall(h, H.LHCALL_FLUSH_ASYNC)
    h.prepare_resume()
    assert not h.interrupts.pending and not h.interrupts.held_back
    assert state(h, "SW_CLK_PENDING") == 1
    assert flags(h) & h.requests.ARM_TIMER
    assert h.requests.words[h.requests.i_tmict] == 2_000_000
    assert h.lguest_data.get("irq_pending") == 0x200    # the guest asks when it can


def test_a_sooner_clock_event_is_kept_when_the_tick_goes_back(h):
    interrupts_off(h)
    h.interrupts.raise_irq(0)
    hcall(h, H.LHCALL_SET_CLOCKEVENT, 500_000)
    h.prepare_resume()
    assert h.requests.words[h.requests.i_tmict] == 500_000


@pytest.mark.parametrize("why", ["masked", "no gate"])
def test_a_tick_python_must_wait_for_stays_with_python(h, why):
    interrupts_off(h)
    if why == "masked":
        h.lguest_data.set("blocked_interrupts", 1)
    else:
        h.clock_vm._set("SW_TICK_HANDLER", 0)
    h.interrupts.raise_irq(0)
    hcall(h, H.LHCALL_FLUSH_ASYNC)
    h.prepare_resume()
    assert h.interrupts.pending == 1 and state(h, "SW_CLK_PENDING") == 0


def test_the_async_ring_cursor_is_published(h):
    status = LDATA + h.layout.hcall_status
    args = LDATA + h.layout.hcalls
    for n in range(64):
        h.memory.set_u8(status + n, 0xFF)               # the guest's empty ring
    for n in range(3):
        h.memory.set_u32(args + n * 20, H.LHCALL_FLUSH_ASYNC)
        h.memory.set_u8(status + n, 0)
    hcall(h, H.LHCALL_FLUSH_ASYNC)
    h.prepare_resume()
    words, image = h.requests.words, h.image
    assert words[(image.SW_HCALL_NEXT - image.SW_REGPAGE) // 4] == 3


def test_exit_counts_name_the_timer(h):
    from launcher.host.trace import exit_kind
    assert exit_kind(h.image.SW_TIMER_VECTOR, 0) == "clock (APIC timer)"
