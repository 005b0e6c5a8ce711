"""The foundation, on a real KVM: the Switcher round trip and the exit loop.

Each test boots tests/guest/testguest.S at one of its labels, in linear
mode at ring 1, on a fresh Machine and Host.
"""
from __future__ import annotations

import threading
import time

import pytest

from kvm_support import TEST_CORRUPT, TEST_ECHO, Harness, guest_elf  # noqa: F401

pytestmark = pytest.mark.kvm


def test_hypercalls_round_trip_with_all_argument_registers(guest_elf):
    n = 100_000
    h = Harness(guest_elf, "hcall_loop", n)
    seen = []

    def echo(ebx: int, ecx: int, edx: int, esi: int) -> None:
        i = len(seen) + 1
        if (ebx, ecx, edx, esi) != (i, ~i & 0xFFFFFFFF, 3 * i, i ^ 0x5A5A5A5A):
            h.host.kill(f"hypercall {i} carried {ebx:#x} {ecx:#x} {edx:#x} {esi:#x}")
        seen.append(i)

    h.host.hypercalls[TEST_ECHO] = echo
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    assert len(seen) == n
    assert h.done[0] == n
    assert h.host.hypercall_counts[TEST_ECHO] == n


@pytest.mark.parametrize("fast", [False, True], ids=["python", "switcher"])
def test_in_arrives_as_gp0_at_the_instruction_and_is_emulated(guest_elf, fast):
    # In Python, each in/out reaches the #GP handler at the instruction;
    # the Switcher answers the same ports itself (nobody claims them).
    h = Harness(guest_elf, "do_io", fast_traps=fast)
    gps = []
    emulate = h.host.on_general_protection

    def on_gp() -> None:
        from launcher.switcher import EIP, ERRCODE
        gps.append((h.host.regs[ERRCODE], h.host.regs[EIP]))
        emulate()

    h.host.trap_handlers[13] = on_gp
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    s = h.symbols
    if fast:
        assert gps == [] and h.host.in_vm["port I/O, cli and CPUID answered"] == 3
    else:
        assert gps == [(0, s["in_insn"]), (0, s["out_insn"]), (0, s["in_dx_insn"])]


def test_page_fault_arrives_with_the_faulting_address(guest_elf):
    h = Harness(guest_elf, "do_pf")
    faults = []
    reflect = h.host.on_page_fault

    def on_pf() -> None:
        from launcher.switcher import EIP
        faults.append((h.host.requests.cr2, h.host.regs[EIP]))
        reflect()

    h.host.trap_handlers[14] = on_pf
    outcome = h.run()
    assert faults == [(0x80000000, h.symbols["pf_insn"])]
    # The guest has no #PF handler, so the Host kills it with lguest's message.
    assert outcome.kind == "killed"
    assert outcome.message.startswith(f"unhandled trap 14 at {h.symbols['pf_insn']:#x}")
    assert "cr2 0x80000000" in outcome.message


def test_syscall_trap_gate_reaches_the_guest_without_an_exit(guest_elf):
    n = 5000
    h = Harness(guest_elf, "syscall_loop", n)
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    assert h.done[0] == n
    # Three exits in all: INIT, LOAD_IDT_ENTRY and TEST_DONE; no 0x80 left the VM.
    assert sum(h.host.trap_counts.values()) == 3
    assert h.host.trap_counts[0x80] == 0


def test_trap_through_the_host_is_delivered_to_the_guest_handler(guest_elf):
    h = Harness(guest_elf, "deliver_ud")
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    eip, cs, esp = h.done
    assert eip == h.symbols["ud_insn"]
    assert cs == 0x61
    assert h.host.trap_counts[6] == 1
    assert esp == h.symbols["stack_top"] - 12      # eip, cs, eflags pushed


def _kick_harness(guest_elf):
    from launcher.machine import KICK_VECTOR
    from launcher.switcher import EIP, ESI
    h = Harness(guest_elf, "spin")
    kicked = []

    def on_kick() -> None:
        kicked.append((h.host.regs[EIP], h.host.regs[ESI]))
        h.host.finish("poweroff", "kicked")

    h.host.trap_handlers[KICK_VECTOR] = on_kick
    return h, kicked


def test_kick_from_another_thread_interrupts_a_spinning_guest(guest_elf):
    h, kicked = _kick_harness(guest_elf)
    timer = threading.Timer(0.3, h.machine.vcpu.kick)
    timer.start()
    start = time.monotonic()
    outcome = h.run()
    timer.join()
    assert outcome.kind == "poweroff"
    assert time.monotonic() - start >= 0.25
    (eip, count), = kicked
    assert h.symbols["spin"] <= eip < h.symbols["spin_end"]
    assert count > 0                       # the guest really ran in between


def test_kick_during_resume_is_not_lost(guest_elf):
    h, kicked = _kick_harness(guest_elf)
    h.machine.vcpu.kick()
    # The first resume clears stale kicks before delivering interrupts, so
    # kick again from inside that step, as a device raising an irq would.
    original = h.host.deliver_interrupts

    def deliver_then_kick() -> None:
        original()
        h.machine.vcpu.kick()

    h.host.deliver_interrupts = deliver_then_kick
    # A lost kick leaves the guest spinning: fail, do not hang.
    guard = threading.Timer(120, h.host.stop, ("killed", "the kick was lost"))
    guard.start()
    try:
        outcome = h.run()
    finally:
        guard.cancel()
    assert outcome.kind == "poweroff", outcome.message
    assert len(kicked) == 1


@pytest.mark.parametrize("register,what", [("ds", "restoring ds"), ("gs", "restoring gs")])
def test_fault_inside_the_switcher_kills_with_a_message(guest_elf, register, what):
    from launcher.switcher import REG_NAMES
    h = Harness(guest_elf, "corrupt")

    def corrupt(*_: int) -> None:
        # GDT entry 20 is empty: a selector the Host lets through (it names
        # no Host segment) but the CPU refuses when the Switcher pops it.
        h.host.regs[REG_NAMES.index(register)] = 0xA3

    h.host.hypercalls[TEST_CORRUPT] = corrupt
    outcome = h.run()
    assert outcome.kind == "killed"
    assert f"fault inside the Switcher while {what}" in outcome.message
    assert "trap 13" in outcome.message


def test_unknown_hypercall_kills(guest_elf):
    h = Harness(guest_elf, "corrupt")       # its hypercall is unregistered here
    outcome = h.run()
    assert outcome == type(outcome)("killed", "unknown hypercall 103")


def test_closed_machine_gives_its_ram_back_and_ignores_late_kicks(guest_elf):
    # A reboot builds a new Machine: the old one's RAM must go at once, and
    # a device or timer thread that kicks it late must not touch freed state.
    from launcher.machine import Machine
    from test_kvm import _rss_kib_of

    machine = Machine(16 << 20)
    machine.memory.write(0, b"\x55" * (16 << 20))
    address = machine.ram.address
    assert _rss_kib_of(address) >= 16 << 10
    machine.close()
    assert not _rss_kib_of(address)           # no pages, or no mapping at all
    machine.vcpu.kick()
    machine.vcpu.stop()
    machine.close()


def switcher_exits(chars: bytes, room: int) -> int:
    """The early console's exits with the Switcher gathering a line: a
    newline, or a byte that finds the buffer full, exits (Python writes
    out the gathered bytes, then that one); then the read-back."""
    exits = gathered = 0
    for c in chars:
        if c == 0x0A or gathered == room:
            exits, gathered = exits + 1, 0
        else:
            gathered += 1
    return exits + 1


@pytest.mark.parametrize("n", [40, 300])
@pytest.mark.parametrize("fast", [False, True], ids=["python", "switcher"])
def test_the_early_console_s_configuration_writes(guest_elf, fast, n):
    """Linux 4.x's early console, one character per four configuration
    writes: the same characters come out both ways, in order. With the trap
    fast path the Switcher keeps the latch and the window's fields itself
    and gathers the characters into lines: a line ends in one exit."""
    import io
    from launcher.virtio.console import Console
    from launcher.virtio.pci_bus import PciBus
    h = Harness(guest_elf, "pci_console", n, fast_traps=fast)
    out = io.BytesIO()
    bus = PciBus([Console(out)], 16 << 20, use_ioeventfd=False)
    bus.install(h.host)
    try:
        outcome = h.run()
    finally:
        bus.shutdown()
    assert outcome.kind == "poweroff", outcome.message
    chars = bytes(0x0A if i < 64 and i % 16 == 15 else 0x41 + i % 16 for i in range(n))
    assert out.getvalue() == chars
    assert h.done[:2] == (60 + 8, n)                 # the offset the Switcher kept
    room = h.host.image.SW_EMERG_MAX
    assert h.host.trap_counts[13] == (switcher_exits(chars, room) if fast else 8 * n + 2)
