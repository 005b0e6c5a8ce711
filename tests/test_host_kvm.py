"""The Host's duties end to end on a real KVM, with the test guest:
page tables (both formats), the clock event and HALT, interrupts held back
and delivered by the periodic kick, the async ring."""
from __future__ import annotations

import pytest

from kvm_support import Harness, guest_elf  # noqa: F401

pytestmark = pytest.mark.kvm


def test_non_pae_tables_switcher_mapping_and_set_pte_flush(guest_elf):
    h = Harness(guest_elf, "paging")
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    assert h.host.pagetables.pae is False
    # The remap was seen (the guest checks), and a trap was then delivered
    # through the guest's own tables onto its stack.
    eip, cs, esp = h.done
    assert cs == 0x61 and esp == h.symbols["stack_top"] - 12
    assert h.host.trap_counts[6] == 1


@pytest.mark.parametrize("force", [None, True])
def test_pae_tables_switch_the_cpu_to_pae(guest_elf, force):
    h = Harness(guest_elf, "paging_pae", pae=force)
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    assert h.host.pagetables.pae is True
    assert h.done[0] == 0x44444444          # read through the remapped PTE


@pytest.mark.parametrize("apic", [False, True], ids=["python", "in-the-vm"])
def test_clock_event_wakes_halt_and_is_delivered(guest_elf, apic):
    h = Harness(guest_elf, "timer_halt", 5, apic=apic)
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    assert h.done[0] == 5
    from launcher.host.hypercalls import LHCALL_HALT, LHCALL_SET_CLOCKEVENT
    python = (h.host.hypercall_counts[LHCALL_HALT],
              h.host.hypercall_counts[LHCALL_SET_CLOCKEVENT])
    in_vm = (h.host.in_vm["HALT"], h.host.in_vm["SET_CLOCKEVENT"],
             h.host.in_vm["clock interrupts delivered"])
    assert (python, in_vm) == (((0, 0), (5, 5, 5)) if apic else ((5, 5), (0, 0, 0)))


def test_held_back_irq_is_delivered_by_the_periodic_kick(guest_elf):
    h = Harness(guest_elf, "held_back")
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    ticks, irq_pending, _ = h.done
    assert ticks == 1
    assert irq_pending == 0          # cleared once nothing else was pending


def test_async_ring_is_drained_before_the_synchronous_call(guest_elf):
    h = Harness(guest_elf, "async_ring")
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    assert h.done[:2] == (0xB9, 0xFF)      # int3 went direct; the slot is free again
    assert h.host.async_ring.executed == 1
    assert h.host.async_ring.cursor == 1
    assert h.host.trap_counts[3] == 0
