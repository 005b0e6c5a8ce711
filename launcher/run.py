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
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from .host import Host, Outcome
from .host.trace import ExitRecorder
from .bootparams import load_kernel
from .errors import UserError
from .machine import Machine
from .memory import GuestMemory
from .virtio.block import Block
from .virtio.console import Console
from .virtio.device import Device
from .virtio.lguest_bus import LguestBus, pages_needed
from .virtio.rng import Rng
from .switcher import DATA_DIR

BUNDLED_GUEST = os.path.join(DATA_DIR, "lgk.bzImage")      # images/: the own guest


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
    blocks: list[tuple[str, bool]] = field(default_factory=list)   # (path, read-only)
    rng: bool = False
    console: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    stdin: int | None = None         # the console's input descriptor, if any

    def devices(self, on_interrupt) -> list[Device]:
        """The lguest bus devices in command-line order, console last (G2)."""
        devs: list[Device] = [Block(path, ro, i) for i, (path, ro) in enumerate(self.blocks)]
        if self.rng:
            devs.append(Rng())
        devs.append(Console(self.console, self.stdin, on_interrupt))
        return devs


def preflight(config: GuestConfig) -> None:
    """Check the kernel and initrd before any VM exists (or a testbed boots):
    load them into throwaway memory, which the kernel only touches sparsely."""
    for i, (path, ro) in enumerate(config.blocks):
        Block(path, ro, i).close()
    try:
        scratch = mmap.mmap(-1, config.mem)
    except OSError as exc:
        raise UserError(f"cannot reserve {config.mem >> 20} MiB for the guest: "
                        f"{exc.strerror}") from None
    memory = GuestMemory(scratch)
    try:
        load_kernel(memory, config.kernel, config.mem, config.cmdline, config.initrd)
    finally:
        memory.view.release()
        scratch.close()


def boot_once(config: GuestConfig, deadline: float | None = None) -> tuple[Outcome, Host]:
    """One boot of the guest. ``deadline`` (time.monotonic()) bounds the whole
    run across reboots; without one, ``config.timeout`` bounds this boot."""
    stop = []
    devices = config.devices(lambda: stop[0]("interrupted", "three ^C on the console"))
    bus = LguestBus(devices, early_console=config.console)
    machine = Machine(config.mem, device_pages=pages_needed(devices))
    timer = None
    try:
        boot = load_kernel(machine.memory, config.kernel, config.mem, config.cmdline,
                           config.initrd)
        machine.set_start(boot.entry)
        host = Host(machine, layout=boot.layout, pae=config.pae)
        stop.append(host.stop)
        bus.install(host, config.mem)
        if config.stats or config.trace:
            host.recorder = ExitRecorder(open(config.trace, "w") if config.trace else None)
        if deadline is None and config.timeout:
            deadline = time.monotonic() + config.timeout
        if deadline is not None:
            timer = threading.Timer(max(0.0, deadline - time.monotonic()), host.stop,
                                    ("timeout", f"--timeout of {config.timeout:g}s expired"))
            timer.daemon = True
            timer.start()
        return host.run(), host
    finally:
        if timer is not None:
            timer.cancel()
        bus.shutdown()
        for dev in devices:
            if isinstance(dev, Block):
                dev.close()
        machine.close()


def run_guest(config: GuestConfig) -> Outcome:
    deadline = time.monotonic() + config.timeout if config.timeout else None
    while True:
        outcome, _host = boot_once(config, deadline)
        if outcome.kind != "restart" or not config.reboot:
            return outcome
