"""The fast paths on a real KVM: the Switcher reflects a #PF, delivers a
system call through an interrupt gate, answers port I/O and CPUID, checks
SET_PTE (host/fastpath.py), and keeps the clock, HALT and the tick in the
VM (host/clockfast.py) exactly as the Python Host does, without an exit,
and gives up to Python whenever it cannot finish. Each scenario runs both
ways and must look the same to the guest."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kvm_support import Harness, guest_elf, require_kvm  # noqa: F401

pytestmark = pytest.mark.kvm
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "launcher", "data")


@pytest.mark.parametrize("fast", [True, False], ids=["switcher", "python"])
def test_guest_handled_faults_look_the_same_both_ways(guest_elf, fast):
    n = 500
    h = Harness(guest_elf, "pf_loop", n, fast_traps=fast)
    outcome = h.run()
    assert outcome.kind == "poweroff", outcome.message
    handled, cr2, irq_enabled = h.done
    assert (handled, cr2, irq_enabled) == (n, 0x80000000, 0)
    exits = h.host.trap_counts[14]
    assert (h.host.fast_faults, exits) == ((n, 0) if fast else (0, n))


@pytest.mark.parametrize("fast", [True, False], ids=["switcher", "python"])
def test_a_frame_that_cannot_be_pushed_goes_to_python(guest_elf, fast):
    h = Harness(guest_elf, "pf_bad_stack", fast_traps=fast)
    outcome = h.run()
    assert outcome.kind == "killed"
    assert "0x8ffffff" in outcome.message, outcome.message
    assert h.host.fast_faults == 0 and h.host.trap_counts[14] == 1


def launcher(*args: str) -> subprocess.CompletedProcess:
    """Every fast path on, the clock in the VM too, whatever the
    environment says: these tests compare them with the --no-fast-* runs
    they make themselves."""
    require_kvm()
    return subprocess.run([sys.executable, "-m", "launcher", "--mem", "64M", "--stats", *args],
                          capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL,
                          env=dict(os.environ, LGUEST_FAST_PATHS="on", LGUEST_FAST_CLOCK="on"))


def exits(stderr: str, kind: str) -> int:
    """One kind's count in the --stats table (0 when it made no exit)."""
    m = re.search(rf"^{re.escape(kind)}\s+(\d+)\s", stderr, re.M)
    return int(m.group(1)) if m else 0


def in_vm(stderr: str, kind: str) -> int:
    """What the Switcher did alone, from the table's last line."""
    m = re.search(rf"(\d+) {re.escape(kind)}\b", stderr)
    return int(m.group(1)) if m else 0


def selftest_lines(result: subprocess.CompletedProcess) -> list[str]:
    failed = re.findall(r"^selftest: .*FAILED.*$", result.stdout, re.M)
    assert result.returncode == 0, (failed, result.stderr[-600:])
    lines = re.findall(r"^selftest: .*$", result.stdout, re.M)
    assert lines and lines[-1].endswith("0 failed"), lines[-3:]
    return lines


def both_ways(image: str, off: str, *words: str) -> tuple:
    """The own guest's self-tests with a fast path on and with ``off``:
    the guest must see the same thing."""
    fast = launcher(os.path.join(DATA, image), *words)
    slow = launcher(off, os.path.join(DATA, image), *words)
    assert selftest_lines(fast) == selftest_lines(slow)
    return fast, slow


@pytest.mark.parametrize("image", ["lgk.bzImage", "lgk-pae.bzImage"])
def test_the_clock_in_the_vm_looks_the_same_to_the_guest(image):
    fast, slow = both_ways(image, "--no-fast-clock")
    # Python: every clock event, HALT and tick exits. The Switcher: nearly none.
    assert exits(slow.stderr, "LHCALL_SET_CLOCKEVENT") > 50
    assert exits(slow.stderr, "LHCALL_HALT") > 0
    assert in_vm(fast.stderr, "clock interrupts delivered") > 50
    # A clock event still reaches Python when an interrupt waits for it
    # there (how often depends on timing), never most of them.
    assert in_vm(fast.stderr, "SET_CLOCKEVENT") > 4 * exits(fast.stderr, "LHCALL_SET_CLOCKEVENT")
    assert exits(fast.stderr, "LHCALL_HALT") <= 1
    # The self-test that holds the tick back with interrupts off asks for
    # it with SEND_INTERRUPTS: delivered in the VM.
    assert in_vm(fast.stderr, "SEND_INTERRUPTS") >= 1
    assert not in_vm(slow.stderr, "clock interrupts delivered")


@pytest.mark.parametrize("oneshot", [False, True], ids=["periodic", "oneshot"])
def test_an_idle_own_guest_makes_no_exits(oneshot):
    require_kvm()
    from launcher.benchsteady import own_guest_idle
    fast = own_guest_idle(oneshot, fast=True, seconds=5)
    slow = own_guest_idle(oneshot, fast=False, seconds=5)
    assert fast["exits_per_s"] <= 1, fast           # the target
    if not oneshot:                                  # a 10 ms tick through Python
        assert slow["exits_per_s"] > 50, slow


@pytest.mark.parametrize("image", ["lgk.bzImage", "lgk-pae.bzImage"])
def test_system_calls_through_an_interrupt_gate(image):
    fast, slow = both_ways(image, "--no-fast-traps", "igate80")
    delivered, python = in_vm(fast.stderr, "system calls delivered"), exits(slow.stderr,
                                                                            "trap 128")
    assert delivered == python > 0
    assert not exits(fast.stderr, "trap 128")
    # The default trap gate never reaches the Switcher at all.
    plain = launcher(os.path.join(DATA, image))
    assert not in_vm(plain.stderr, "system calls delivered")
    assert not exits(plain.stderr, "trap 128")


@pytest.mark.parametrize("image", ["lgk.bzImage", "lgk-pae.bzImage"])
def test_the_own_guest_passes_the_same_self_tests_both_ways(image):
    fast, slow = both_ways(image, "--no-fast-traps")
    reflected = re.search(r"(\d+) page faults reflected", fast.stderr)
    python = re.search(r"^trap 14\s+(\d+)", slow.stderr, re.M)
    assert reflected and python, fast.stderr + slow.stderr
    assert int(reflected.group(1)) == int(python.group(1)) > 0
    assert not re.search(r"^trap 14\s", fast.stderr, re.M)
    # SET_PTE checked and carried out in the VM: calls Python would have taken.
    assert in_vm(fast.stderr, "SET_PTE") > 0
    assert exits(slow.stderr, "LHCALL_SET_PTE") >= in_vm(fast.stderr, "SET_PTE")
    assert not in_vm(slow.stderr, "SET_PTE")
    # The self-tests' ring-1 port I/O and cli are answered without an exit;
    # ring 3's in/out still reach the guest's #GP handler through Python.
    assert in_vm(fast.stderr, "port I/O, cli and CPUID answered") > 0
    assert exits(fast.stderr, "trap 13") < exits(slow.stderr, "trap 13")
