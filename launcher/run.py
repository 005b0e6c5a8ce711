"""Putting a guest together and running it: the Launcher's core.

``GuestConfig`` says what to boot. A ``Session`` holds what lives across
reboots (the images, the devices and their files, /dev/kvm); each boot
builds a fresh Machine, loads the kernel, puts the lguest bus in front of the
devices, and runs the Host until the guest ends, rebooting in place when the
guest asks and the config allows.

In-process use (the CLI's; launcher/api.py runs the command instead):

    from launcher.run import GuestConfig, run_guest
    outcome = run_guest(GuestConfig(kernel="vmlinux", mem=64 << 20))
"""
from __future__ import annotations

import mmap
import os
import sys
import threading
from collections import Counter
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from .host import Host, Outcome
from .host.trace import ExitRecorder
from .bootparams import kernel_generation, load_kernel, read_image
from .kvm import Kvm
from .errors import UserError
from .machine import Machine
from .memory import GuestMemory
from .virtio.block import Block
from .virtio.console import Console
from .virtio.device import Device
from .virtio.lguest_bus import LguestBus, pages_needed
from . import dma
from .virtio.pci_bus import PciBus
from .virtio.net import Net
from .hostnet.passt import default_mac, parse_user_net, user_net_backend
from .hostnet.tap import TapBackend, parse_tunnet
from .virtio.rng import Rng
from .fastpaths import fast_clock_default, fast_paths_default
from .switcher import DATA_DIR, load_image

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
    started: float | None = None     # time.time() the timeout counts from (default: now)
    stats: bool = False              # count and time exits by kind
    trace: str | None = None         # Chrome trace-event JSON of every exit
    # Devices in command-line order: ("block", (path, read-only)), ("tunnet", spec),
    # ("usernet", spec), ("rng", None)
    devices_spec: list[tuple[str, object]] = field(default_factory=list)
    console: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    stdin: int | None = None         # the console's input descriptor, if any
    # The fast paths (launcher/fastpaths.py): on unless LGUEST_FAST_PATHS=off.
    ioeventfd: bool = field(default_factory=fast_paths_default)   # G3 kicks as ioeventfds
    fast_traps: bool = field(default_factory=fast_paths_default)  # #PF reflected in the VM
    fast_clock: bool = field(default_factory=fast_clock_default)  # clock, HALT, tick in the VM
    log: Callable[[str], None] | None = None   # --verbose: says what the launcher does

    def devices(self, on_interrupt) -> list[Device]:
        """The devices in command-line order, console last (the lguest bus's
        order; the PCI bus moves it to slot 1)."""
        devs: list[Device] = []
        seen: Counter[str] = Counter()     # block0, block1, net0 ... per kind
        try:
            for kind, arg in self.devices_spec:
                family = "net" if kind in ("tunnet", "usernet") else kind
                n = seen[family]
                seen[family] += 1
                if kind == "block":
                    path, ro = arg
                    devs.append(Block(path, ro, n))
                elif kind == "tunnet":
                    ip, bridge, mac = parse_tunnet(arg)
                    devs.append(Net(TapBackend(ip, bridge), n, mac, mac_given=mac is not None))
                elif kind == "usernet":
                    net = parse_user_net(arg)
                    devs.append(Net(user_net_backend(net), n, net.mac or default_mac(n),
                                    mac_given=net.mac is not None))
                else:
                    devs.append(Rng())
        except Exception:
            for d in devs:
                d.close()
            raise
        devs.append(Console(self.console, self.stdin, on_interrupt))
        return devs


class Session:
    """What lives across reboots: the kernel and initrd bytes, the devices
    and their files, /dev/kvm, the exit recorder. Each ``boot`` builds a
    fresh VM from them; ``run`` reboots in place until the guest ends."""

    def __init__(self, config: GuestConfig) -> None:
        self.config = config
        self.kernel = read_image(config.kernel)
        self.initrd = read_image(config.initrd) if config.initrd else None
        # G1/G2 find devices on the lguest bus, G3 on PCI: the kernel's
        # version string says which before anything boots.
        self.generation = kernel_generation(self.kernel, config.kernel)
        self.host: Host | None = None
        # G0's network card takes its MAC from lguest_data.guestid
        # (02:00:id:id:00:00): one per launcher, so guests on one bridge differ.
        self.guestid = os.getpid() & 0xFFFF
        self.devices = config.devices(self.console_interrupt)
        self.kvm: Kvm | None = None
        self.attached = False            # the devices' host sides (open_kvm)
        self.recorder: ExitRecorder | None = None
        try:
            if config.pae and not self.generation.may_be_pae:
                raise UserError(f"--pae: Linux {self.generation.releases} has no PAE guests "
                                "(lguest's PAE support came with 2.6.31)")
            if self.generation.bus == "dma":
                dma.check_devices(self.devices)
        except UserError:
            self.close()
            raise
        if config.trace:
            # Say now if the file cannot be written, but create it only
            # where the guest runs (open_kvm): a launcher that hands the run
            # to the testbed must not leave its own copy over the real one.
            where = os.path.dirname(os.path.abspath(config.trace))
            if os.path.isdir(config.trace) or not os.access(where, os.W_OK):
                self.close()
                raise UserError(f"--trace {config.trace}: cannot write there")
        # --timeout counts from when the command started (config.started),
        # which may be a testbed boot ago: turn it into our monotonic clock.
        self.deadline = None
        if config.timeout:
            started = config.started if config.started is not None else time.time()
            self.deadline = time.monotonic() + started + config.timeout - time.time()

    def note(self, message: str) -> None:
        """A --verbose line."""
        if self.config.log is not None:
            self.config.log(message)

    def console_interrupt(self) -> None:
        if self.host is not None:
            self.host.stop("interrupted", "three ^C on the console")

    def check(self) -> None:
        """Load the kernel and initrd into throwaway memory (which the kernel
        touches only sparsely), so input errors surface before any VM or
        testbed boots."""
        c = self.config
        try:
            scratch = mmap.mmap(-1, c.mem)
        except OSError as exc:
            raise UserError(f"cannot reserve {c.mem >> 20} MiB for the guest: "
                            f"{exc.strerror}") from None
        memory = GuestMemory(scratch)
        try:
            self._load(memory)
        finally:
            memory.release()
            scratch.close()

    def _load(self, memory: GuestMemory):
        c = self.config
        return load_kernel(memory, c.kernel, c.mem, c.cmdline, c.initrd,
                           data=self.kernel, initrd_data=self.initrd)

    def open_kvm(self) -> None:
        """/dev/kvm and the Switcher image: everything a boot opens by path,
        so the launcher can chroot and drop root afterwards."""
        load_image()
        if self.kvm is None:
            self.kvm = Kvm()
        if not self.attached:
            # Host sides of the devices (a tap, passt) exist only where the
            # guest runs: never in a launcher that hands the run to the testbed.
            self.attached = True
            describe = dma.describe if self.generation.bus == "dma" else lambda d: d.describe()
            for dev in self.devices:
                dev.attach()
                self.note(f"device {describe(dev)}")
        c = self.config
        if self.recorder is None and (c.stats or c.trace):
            try:
                trace = open(c.trace, "w") if c.trace else None
            except OSError as exc:
                raise UserError(f"--trace {c.trace}: {exc.strerror}") from None
            self.recorder = ExitRecorder(trace)

    def boot(self) -> Outcome:
        c = self.config
        self.open_kvm()
        gen = self.generation
        bus: LguestBus | PciBus | dma.DmaBus
        if gen.bus == "pci":
            bus = PciBus(self.devices, c.mem, use_ioeventfd=c.ioeventfd)
            machine = Machine(c.mem, kvm=self.kvm, apic=c.fast_clock)
            if bus.limit > machine.image.SW_BASE:
                machine.close(keep_kvm=True)
                raise UserError(f"--mem {c.mem >> 20}M leaves no room for the PCI devices' "
                                "registers below 4 GiB: give the guest less memory")
        elif gen.bus == "dma":
            bus = dma.DmaBus(self.devices)
            machine = Machine(c.mem, device_pages=dma.pages_needed(self.devices),
                              kvm=self.kvm, apic=c.fast_clock)
        else:
            bus = LguestBus(self.devices, early_console=c.console,
                            start_on_kick=gen.start_on_kick, first_virtio=gen.first_virtio)
            machine = Machine(c.mem, device_pages=pages_needed(self.devices), kvm=self.kvm,
                              apic=c.fast_clock)
        timer = None
        started = time.monotonic()
        try:
            boot = self._load(machine.memory)
            if boot.page_offset:
                machine.alias_linear(boot.page_offset)     # G0 starts at virtual addresses
            machine.set_start(boot.entry)
            self.note_layout(machine, bus, boot)
            if gen.vmcall:
                self.pass_vmcall_on(machine, boot.version)
            host = self.host = Host(machine, generation=gen, pae=c.pae,
                                     fast_traps=c.fast_traps)
            host.boot_tables_below = boot.initrd_at
            host.kernel_image = boot.image
            if boot.page_offset:
                host.pagetables.linear_alias = host.kernel_address = boot.page_offset
                host.guestid = self.guestid
            if isinstance(bus, PciBus):
                bus.install(host, vm=machine.vm)
            else:
                bus.install(host, c.mem)
            host.recorder = self.recorder
            if self.deadline is not None:
                timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), host.stop,
                                        ("timeout", f"--timeout of {c.timeout:g}s expired"))
                timer.daemon = True
                timer.start()
            outcome = host.run()
            self.note(f"guest ran {time.monotonic() - started:.2f} s: {outcome.kind}"
                      f"{' (' + outcome.message + ')' if outcome.message else ''}")
            return outcome
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()          # a host.stop() under way ends before the VM does
            bus.shutdown()
            machine.close(keep_kvm=True)

    def pass_vmcall_on(self, machine: Machine, version: str) -> None:
        """A 2.6.30-2.6.39 guest's `vmcall` must reach the Host (host/vmcall.py):
        where it cannot, refuse the releases that need it for every call."""
        why = machine.trap_vmcall()
        if why is None:
            self.note("`vmcall` reaches the Host as #UD (KVM's hypercall patching is off)")
        elif not self.generation.vmcall_site_known:
            raise UserError(f"{self.config.kernel}: Linux {version.split()[0]} makes every "
                            f"hypercall with `vmcall`, and {why}: it cannot run on this host "
                            "(Linux 2.6.24-2.6.29 and 2.6.34 on can)")
        else:
            self.note(f"`vmcall` stays KVM's ({why}): send_interrupts is rewritten at INIT")

    def note_layout(self, machine: Machine, bus: "LguestBus | PciBus | dma.DmaBus",
                    boot) -> None:
        if self.config.log is None:
            return
        c = self.config
        self.note(f"kernel {c.kernel}: Linux {boot.version or '(no version string)'}, "
                  f"lguest generation {boot.generation.describe()}; entry {boot.entry:#x}, "
                  f"the kernel ends at {boot.kernel_end:#x}")
        top = machine.image.SW_BASE
        if isinstance(bus, PciBus):
            devices = f"PCI device registers up to {bus.limit:#x}"
        else:
            what = "devices' pages" if isinstance(bus, dma.DmaBus) else "bus's page and rings"
            devices = f"the lguest {what} {c.mem:#x}-{machine.layout.slot0_size:#x}"
        self.note(f"memory: RAM 0-{c.mem:#x} ({c.mem >> 20} MiB); {devices}; "
                  f"the Switcher's pages from {top:#x}")
        if c.initrd:
            self.note(f"initrd {c.initrd}: {len(self.initrd or b'')} bytes, at the top of RAM")
        self.note(f"command line: {c.cmdline!r}")
        self.note(machine.apic_note)

    def run(self) -> Outcome:
        while True:
            outcome = self.boot()
            if outcome.kind != "restart" or not self.config.reboot:
                return outcome

    def close(self) -> None:
        """Release everything; safe to call again (the CLI's early returns
        and its final clean-up both close). A second close of a device would
        close whatever descriptor has since taken its number."""
        devices, self.devices = self.devices, []
        for dev in devices:
            dev.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None


def run_guest(config: GuestConfig) -> Outcome:
    session = Session(config)
    try:
        return session.run()
    finally:
        session.close()
