"""Helpers for tests that boot guests: the KVM gate and the test guest.

``require_kvm()`` fails (with CI set) or skips when this process cannot run
32-bit paged guests; the testbed plugin normally makes sure kvm-marked tests
run where it can.
"""
from __future__ import annotations

import os
import subprocess
from functools import lru_cache

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_GUEST_SRC = os.path.join(HERE, "guest", "testguest.S")


def require_kvm() -> None:
    from launcher.kvm import probe
    result = probe()
    if not result.usable:
        if os.environ.get("CI"):
            pytest.fail(f"KVM tests must run in CI, but {result.reason}")
        pytest.skip(result.reason)


@lru_cache(maxsize=None)
def build_test_guest(outdir: str) -> str:
    """Assemble and link the test guest at 1 MiB; returns the ELF path."""
    out = os.path.join(outdir, "testguest.elf")
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-Wl,-Ttext=0x100000",
                    "-Wl,--build-id=none", "-Wl,-e,hcall_loop", "-o", out, TEST_GUEST_SRC],
                   check=True)
    return out
