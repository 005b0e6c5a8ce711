"""Putting a guest together and running it: the Launcher's core.

``GuestConfig`` says what to boot; ``run_guest`` builds the Machine, loads
the image, wires the Host to the Launcher's side (the early console for now;
devices arrive with the lguest bus) and runs until the guest ends, rebooting
in place when the guest asks and the config allows.

This is also the Python API for CI scripts:

    from launcher.run import GuestConfig, run_guest
    outcome = run_guest(GuestConfig(kernel="vmlinux", mem=64 << 20))
"""
from __future__ import annotations

import mmap
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

from .host import Host, Outcome
from .host.trace import ExitRecorder
from .bootparams import load_kernel
from .machine import Machine
from .memory import GuestMemory
from .switcher import DATA_DIR

BUNDLED_GUEST = os.path.join(DATA_DIR, "hello.elf")
EARLY_CONSOLE_MAX = 256      # bytes read per early-console NOTIFY


@dataclass
class GuestConfig:
    kernel: str = BUNDLED_GUEST
    mem: int = 64 << 20
    cmdline: str = ""
    initrd: str | None = None
    reboot: bool = True              # a guest reboot restarts it in place
    pae: bool | None = None          # None: decided from the guest's first table
    timeout: float | None = None     # seconds; the run ends as "timeout"
    stats: bool = False              # count and time exits by kind
    trace: str | None = None         # Chrome trace-event JSON of every exit
    console: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)


class EarlyConsole:
    """NOTIFY values that name no device are strings for the console."""

    def __init__(self, host: Host, out: BinaryIO) -> None:
        self.host, self.out = host, out

    def __call__(self, gpa: int) -> None:
        memory = self.host.memory
        limit = min(EARLY_CONSOLE_MAX, memory.size - gpa) if gpa < memory.size else 1
        text = memory.cstring(gpa, limit, "early console string")
        self.out.write(text)
        self.out.flush()


def preflight(config: GuestConfig) -> None:
    """Check the kernel and initrd before any VM exists (or a testbed boots):
    load them into throwaway memory, which the kernel only touches sparsely."""
    scratch = mmap.mmap(-1, config.mem)
    memory = GuestMemory(scratch)
    try:
        load_kernel(memory, config.kernel, config.mem, config.cmdline, config.initrd)
    finally:
        memory.view.release()
        scratch.close()


def boot_once(config: GuestConfig) -> tuple[Outcome, Host]:
    machine = Machine(config.mem)
    timer = None
    try:
        boot = load_kernel(machine.memory, config.kernel, config.mem, config.cmdline,
                           config.initrd)
        machine.set_start(boot.entry)
        host = Host(machine, layout=boot.layout, pae=config.pae)
        host.on_notify = EarlyConsole(host, config.console)
        if config.stats or config.trace:
            host.recorder = ExitRecorder(open(config.trace, "w") if config.trace else None)
        if config.timeout:
            timer = threading.Timer(config.timeout, host.stop,
                                    ("timeout", f"--timeout of {config.timeout:g}s expired"))
            timer.daemon = True
            timer.start()
        return host.run(), host
    finally:
        if timer is not None:
            timer.cancel()
        machine.close()


def run_guest(config: GuestConfig) -> Outcome:
    while True:
        outcome, _host = boot_once(config)
        if outcome.kind != "restart" or not config.reboot:
            return outcome
