"""The project's own guest kernel (images/lgk) end to end: its self-test
suite exercises every Host duty, through the real `launcher` command."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kvm_support import require_kvm

pytestmark = pytest.mark.kvm

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "launcher", "data")


def launcher(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    require_kvm()
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("image", ["lgk.bzImage", "lgk-pae.bzImage", "lgk.elf"])
def test_self_tests_pass(image):
    result = launcher("--mem", "64M", "--stats", os.path.join(DATA, image))
    summary = re.search(r"selftest: (\d+) passed, (\d+) failed", result.stdout)
    assert summary, result.stdout[-2000:] + result.stderr[-2000:]
    assert int(summary.group(1)) >= 30 and summary.group(2) == "0", result.stdout
    assert result.returncode == 0, result.stderr
    assert "FAILED" not in result.stdout
    # --stats: exits by kind, and the total.
    assert re.search(r"^LHCALL_NEW_PGTABLE\s+\d+", result.stderr, re.M)
    assert re.search(r"^total\s+\d+", result.stderr, re.M)


def test_bundled_guest_is_the_default():
    result = launcher("--mem", "64M")
    assert result.returncode == 0, result.stderr
    assert re.search(r"selftest: \d+ passed, 0 failed", result.stdout)


def test_restart_with_no_reboot_exits_3():
    result = launcher("--no-reboot", os.path.join(DATA, "lgk.bzImage"), "restart")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.startswith("launcher: guest asked to reboot")


def test_guest_crash_exits_1_with_its_message():
    result = launcher(os.path.join(DATA, "lgk.bzImage"), "hostile=nonsense")
    assert result.returncode == 1
    assert result.stderr.startswith("launcher: guest crashed: ")
    assert result.stderr.count("\n") == 1


def test_timeout_exits_124():
    result = launcher("--timeout", "1", os.path.join(DATA, "lgk.bzImage"), "restart")
    assert result.returncode == 124, result.stderr
