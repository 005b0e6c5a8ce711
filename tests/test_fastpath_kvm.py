"""The page-fault fast path on a real KVM: the Switcher reflects a #PF
exactly as the Python Host does (host/fastpath.py), without an exit, and
gives up to Python when it cannot push the frame. Each scenario runs both
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
    require_kvm()
    return subprocess.run([sys.executable, "-m", "launcher", "--mem", "64M", "--stats", *args],
                          capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("image", ["lgk.bzImage", "lgk-pae.bzImage"])
def test_the_own_guest_passes_the_same_self_tests_both_ways(image):
    fast = launcher(os.path.join(DATA, image))
    slow = launcher("--no-fast-traps", os.path.join(DATA, image))
    for result in (fast, slow):
        failed = re.findall(r"^selftest: .*FAILED.*$", result.stdout, re.M)
        assert result.returncode == 0, (failed, result.stderr[-600:])
    lines = [re.findall(r"^selftest: .*$", r.stdout, re.M) for r in (fast, slow)]
    assert lines[0] == lines[1] and lines[0][-1].endswith("0 failed")
    reflected = re.search(r"and (\d+) page faults the Switcher reflected", fast.stderr)
    python = re.search(r"^trap 14\s+(\d+)", slow.stderr, re.M)
    assert reflected and python, fast.stderr + slow.stderr
    assert int(reflected.group(1)) == int(python.group(1)) > 0
    assert not re.search(r"^trap 14\s", fast.stderr, re.M)
