"""Virtual interrupt delivery rules (docs/abi.md §6.5), the async ring,
SET_STACK, TS/#NM and the notify map, without KVM."""
import os
import threading
import time

import pytest

from fakes import FakeMachine
from launcher import descriptors as D
from launcher.errors import GuestFault
from launcher.host import Host
from launcher.host import hypercalls as H
from launcher.host.notify import NotifyMap
from launcher.switcher import CS, EAX, EFLAGS, EIP, ESP, SS, TRAPNUM

LDATA = 0x1000
HANDLER = 0xC0100000


@pytest.fixture
def host():
    m = FakeMachine()
    m.memory.set_u32(LDATA + 1388, 0x80)
    m.memory.set_u32(LDATA + 1384, 0xC0000000)
    m.memory.set_u32(LDATA + 1376, 0x5000)      # noirq_start
    m.memory.set_u32(LDATA + 1380, 0x5010)      # noirq_end
    m.memory.write(LDATA + 24, b"\xff" * 64)     # hcall_status: every slot free
    h = Host(m)
    h.hcall_init(LDATA)
    r = m.regs
    r[CS], r[SS], r[ESP], r[EIP], r[EFLAGS] = 0x61, 0x69, 0x8000, 0x2000, 0x202
    for irq in range(4):
        h.traps.load_idt_entry(32 + irq, *D.split(D.gate(HANDLER + irq, 0x60, 0xE, 0)))
    yield h
    h.shutdown()


def ld(h, off):
    return h.memory.u32(LDATA + off)


def set_ld(h, off, value):
    h.memory.set_u32(LDATA + off, value)


def test_lowest_unblocked_irq_is_delivered_when_enabled(host):
    set_ld(host, 0, 0x200)          # irq_enabled
    set_ld(host, 4, 0b0001)         # irq 0 blocked
    host.interrupts.pending = 0b0110
    host.interrupts.deliver()
    assert host.regs[EIP] == HANDLER + 1
    assert host.interrupts.pending == 0b0100
    assert ld(host, 0) == 0          # interrupt gate: irq_enabled off
    assert ld(host, 20) == 0         # left alone while irq 2 still waits (§6.5)
    # The stacked eflags carried IF (irq_enabled was on).
    assert host.memory.u32(0x8000 - 4) == 0x202


def test_irq_pending_is_cleared_when_nothing_else_waits(host):
    set_ld(host, 0, 0x200)
    set_ld(host, 20, 0x200)
    host.interrupts.pending = 0b1
    host.interrupts.deliver()
    assert ld(host, 20) == 0


def test_disabled_guest_gets_irq_pending_and_the_held_back_kick(host):
    woken = []
    host.interrupts.on_held_back = lambda: woken.append(1)
    host.interrupts.pending = 0b1
    host.interrupts.deliver()
    assert host.regs[EIP] == 0x2000
    assert ld(host, 20) == 0x200 and host.interrupts.held_back and woken == [1]
    set_ld(host, 0, 0x200)
    host.interrupts.deliver()
    assert host.regs[EIP] == HANDLER and not host.interrupts.held_back


def test_no_delivery_inside_the_iret_window(host):
    set_ld(host, 0, 0x200)
    host.interrupts.pending = 0b1
    host.regs[EIP] = 0x5008
    host.interrupts.deliver()
    assert host.regs[EIP] == 0x5008 and host.interrupts.pending == 1


def test_halted_guest_is_woken_with_interrupts_on(host):
    host.interrupts.pending = 0b1
    host.interrupts.halt()                       # returns: a candidate is pending
    host.interrupts.deliver()
    assert host.regs[EIP] == HANDLER
    assert not host.interrupts.halted


def test_halt_blocks_until_an_unblocked_irq_is_raised(host):
    set_ld(host, 4, 0b1)
    threading.Timer(0.05, host.interrupts.raise_irq, (0,)).start()   # blocked: no wake
    threading.Timer(0.15, host.interrupts.raise_irq, (3,)).start()
    start = time.monotonic()
    host.interrupts.halt()
    assert time.monotonic() - start >= 0.14
    assert host.machine.vcpu.kicks == 2


def test_irq_without_a_handler_stays_pending(host):
    set_ld(host, 0, 0x200)
    host.interrupts.pending = 1 << 9
    host.interrupts.deliver()
    assert host.interrupts.pending == 1 << 9 and host.regs[EIP] == 0x2000


def test_raise_irq_range(host):
    with pytest.raises(ValueError):
        host.interrupts.raise_irq(32)


def test_async_ring_drains_in_order_from_a_persistent_cursor(host):
    mem = host.memory
    status, calls = LDATA + 24, LDATA + 88
    def queue(slot, *args):
        for i, a in enumerate(args):
            mem.set_u32(calls + 20 * slot + 4 * i, a)
        mem.set_u8(status + slot, 0)
    entry = D.split(D.gate(0xC0200000, 0x60, 0xF, 3))
    queue(0, H.LHCALL_LOAD_IDT_ENTRY, 3, *entry)
    queue(1, H.LHCALL_TS, 8)
    host.async_ring.drain()
    assert host.async_ring.cursor == 2 and host.ts_wanted
    assert mem.read(status, 3) == b"\xff\xff\xff"
    assert host.traps.has_handler(3)
    queue(2, H.LHCALL_TS, 0)
    host.async_ring.drain()
    assert host.async_ring.cursor == 3 and not host.ts_wanted


def test_async_ring_refuses_init_and_unknown_calls(host):
    host.memory.set_u32(LDATA + 88, H.LHCALL_LGUEST_INIT)
    host.memory.set_u8(LDATA + 24, 0)
    with pytest.raises(GuestFault, match="async"):
        host.async_ring.drain()


def test_synchronous_hypercall_drains_first(host):
    host.memory.set_u32(LDATA + 88, H.LHCALL_TS)
    host.memory.set_u32(LDATA + 92, 8)
    host.memory.set_u8(LDATA + 24, 0)
    host.regs[TRAPNUM], host.regs[EAX] = 0x1F, H.LHCALL_FLUSH_ASYNC
    host.handle_trap()
    assert host.ts_wanted


def test_set_stack_checks(host):
    host.set_stack(0x69, 0x9000, 1)
    assert (host.ss1, host.esp1) == (0x69, 0x9000)
    assert (host.machine.tss[4], host.machine.tss[3]) == (0x69, 0x9000)
    with pytest.raises(GuestFault, match="ring 1"):
        host.set_stack(0x68, 0x9000, 1)
    with pytest.raises(GuestFault, match="at most 2"):
        host.set_stack(0x69, 0x9000, 3)
    with pytest.raises(GuestFault, match="bad stack page"):
        host.set_stack(0x69, host.memory.size + 0x2000, 2)


def test_nm_is_silent_unless_the_guest_wants_ts(host):
    host.traps.load_idt_entry(7, *D.split(D.gate(0xC0300000, 0x60, 0xE, 0)))
    host.regs[TRAPNUM] = 7
    host.handle_trap()
    assert host.regs[EIP] == 0x2000 and host.requests.pending & host.requests.CLEAR_TS
    host.set_ts(8)
    assert host.requests.pending & host.requests.SET_TS
    host.handle_trap()
    assert host.regs[EIP] == 0xC0300000


def test_notify_hits_signal_the_eventfd_and_misses_go_to_the_launcher(host):
    fd = os.eventfd(0)
    misses = []
    host.on_notify = misses.append
    host.notify_map.add(0x5000, fd)
    host.notify(0x5000)
    host.notify(0x6000)
    assert os.eventfd_read(fd) == 1 and misses == [0x6000]
    os.close(fd)


def test_notify_map_add_waits_for_readers_of_the_old_snapshot():
    nm = NotifyMap()
    nm.add(1, 11)
    inside, release, added = threading.Event(), threading.Event(), threading.Event()

    def reader():
        with nm.reading() as snap:
            inside.set()
            release.wait(5)
            assert 2 not in snap            # a reader keeps the snapshot it took

    t = threading.Thread(target=reader)
    t.start()
    inside.wait(5)
    w = threading.Thread(target=lambda: (nm.add(2, 22), added.set()))
    w.start()
    time.sleep(0.1)
    assert not added.is_set()               # the grace period is not over
    assert nm.snapshot() == {1: 11, 2: 22}  # but new readers already see it
    release.set()
    t.join(5)
    w.join(5)
    assert added.is_set() and nm.grace_periods == 2
    with pytest.raises(ValueError):
        nm.add(0, 1)


def test_g3_delivery_at_the_final_iret_reuses_the_frame():
    from launcher.generations import GEN_G3
    m = FakeMachine()
    m.memory.set_u32(LDATA + 1384, 0x80)          # G3 syscall_vec
    m.memory.set_u32(LDATA + 1380, 0xC0000000)    # G3 kernel_address
    m.memory.set_u32(LDATA + 1376, 0x5000)        # noirq_iret
    m.memory.write(LDATA + 24, b"\xff" * 64)
    h = Host(m, generation=GEN_G3)
    h.hcall_init(LDATA)
    h.traps.load_idt_entry(32, *D.split(D.gate(HANDLER, 0x60, 0xE, 0)))
    r = m.regs
    r[CS], r[SS], r[ESP], r[EIP], r[EFLAGS] = 0x61, 0x69, 0x8000, 0x5000, 0x202
    m.memory.set_u32(0x8008, 0x346)               # stacked eflags (TF set)
    set_ld(h, 0, 0x200)
    h.interrupts.pending = 1
    h.interrupts.deliver()
    assert (r[EIP], r[ESP], r[EFLAGS]) == (HANDLER, 0x8000, 0x246)
    assert m.memory.u32(0x8000 - 4) == 0          # nothing pushed
    assert ld(h, 0) == 0
    h.shutdown()


def test_a_held_back_irq_that_gets_masked_stops_asking_for_send_interrupts(host):
    """irq_pending tells the guest to make SEND_INTERRUPTS when it re-enables
    interrupts. If the IRQ is masked meanwhile there is nothing to send: the
    flag must go, or every irq_enable costs an exit."""
    data = host.lguest_data
    data.set("blocked_interrupts", 0)
    data.set("irq_enabled", 0)
    host.interrupts.raise_irq(3)
    host.interrupts.deliver()
    assert data.get("irq_pending") == 0x200                    # held back
    data.set("blocked_interrupts", 1 << 3)                     # the guest masks it
    host.interrupts.deliver()
    assert data.get("irq_pending") == 0 and host.interrupts.pending == 1 << 3
    data.set("blocked_interrupts", 0)                          # unmasked, irqs on:
    data.set("irq_enabled", 0x200)
    host.interrupts.deliver()                                  # delivered after all
    assert host.interrupts.pending == 0
