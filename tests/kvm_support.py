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


def kernel_release(kernel: str) -> tuple[int, int, int]:
    """(2, 6, 32) for a Linux 2.6.32 image, from its version string."""
    from launcher.bench import kernel_release as release_of
    return release_of(kernel)


def initrd_for(kernel: str) -> str | None:
    """The initramfs for a real kernel (README, "Guest kernels"):
    LGUEST_TEST_INITRD, or for a Linux 2.6 one LGUEST_TEST_INITRD_2_6 if
    set (a glibc-linked userland refuses kernels older than 3.2)."""
    from launcher.bench import initrd_for_kernel
    return initrd_for_kernel(kernel)


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


TEST_ECHO, TEST_DONE, TEST_FAIL, TEST_CORRUPT = 100, 101, 102, 103


@pytest.fixture(scope="module")
def guest_elf(tmp_path_factory):
    """The test guest, built once per module (and only where KVM is)."""
    require_kvm()
    return build_test_guest(str(tmp_path_factory.mktemp("testguest")))


class Harness:
    """A Machine + Host running the test guest from one label; ebp carries
    the scenario's parameter; ``apic`` puts the LAPIC in KVM (the clock in
    the VM) or not (default: LGUEST_FAST_PATHS). TEST_DONE powers off with (ebx, ecx, edx) in
    ``done``; TEST_FAIL crashes."""

    def __init__(self, elf: str, label: str, param: int = 0, apic: bool | None = None,
                 **host_args) -> None:
        from launcher.host import Host
        from launcher.loader import load_elf
        from launcher.machine import Machine

        self.machine = Machine(16 << 20, apic=apic)
        image = load_elf(self.machine.memory, elf, want_symbols=True)
        self.symbols = image.symbols
        self.machine.set_start(self.symbols[label], ebp=param)
        self.host = Host(self.machine, **host_args)
        self.done: tuple[int, int, int] | None = None
        self.host.hypercalls[TEST_DONE] = self._done
        self.host.hypercalls[TEST_FAIL] = self._fail

    def _done(self, ebx: int, ecx: int, edx: int, esi: int) -> None:
        self.done = (ebx, ecx, edx)
        self.host.finish("poweroff", "test done")

    def _fail(self, ebx: int, *_: int) -> None:
        self.host.finish("crash", f"guest self-check failed near {ebx:#x}")

    def run(self):
        try:
            return self.host.run()
        finally:
            self.machine.close()
