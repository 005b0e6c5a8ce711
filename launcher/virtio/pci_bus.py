"""The G3 transport: virtio 1.0 devices on an emulated PCI bus (docs/abi.md §10).

Two kinds of guest access reach it:

- **Port I/O** to 0xCF8-0xCFF (type-1 configuration cycles). At ring 1 an
  `in`/`out` faults; the Host's #GP emulation (host/core.py, emulate_io)
  decodes it and calls ``port_in``/``port_out`` here. With the trap fast
  path the Switcher keeps some writes itself and never exits for them:
  the address written to 0xCF8, and writes to the PCI_CFG window's bar,
  offset and length (Linux 4.x's early console sets all three for each
  character it prints). Both live in the register page (``address``, the
  kept dwords): the bus reads them back before any access it handles.
- **MMIO** to a BAR0 window. The windows sit above RAM, where KVM has no
  memory slot, so a guest load or store there is a KVM_EXIT_MMIO that KVM
  has already decoded (address, width, data): no instruction decoder in
  Python, unlike the original Launcher. The Host passes it to ``mmio``.

Slot 0 is a dummy host bridge (the guest's probe wants one), the console is
slot 1 with INTERRUPT_LINE 1 (the early console insists), and the other
devices follow in command-line order with lines 2, 3, ... Each BAR0 is
aligned to its power-of-two size, from RAM's end + 1 MiB.

Kicks: the notify register is one address per function and the guest
writes the queue index. When the device goes live each index is bound to
its queue's eventfd with KVM_IOEVENTFD, so a kick wakes the device thread
without the vCPU leaving the kernel; a kick KVM did not match (a bad index,
or ioeventfd unavailable) still arrives as an MMIO exit and is checked here.
"""
from __future__ import annotations


from ..errors import GuestFault
from ..kvm import KvmError
from ..memory import GuestMemory
from .device import Device
from .pci_config import (DEVICE_CFG_OFFSET, NOTIFY_OFFSET, PCI_CFG_BAR, PCI_CFG_DATA,
                         PCI_CFG_LENGTH, PCI_CFG_OFFSET, ConfigSpace, bar_size)
from .pci_function import VirtioPciFunction

PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA = 0xCF8, 0xCFC
PCI_CONFIG_ENABLE = 1 << 31
KBD_STATUS_PORT = 0x64
# Linux 4.x calibrates the CPU against PIT channel 2 even under lguest: with
# all ones it waits 50,000 reads for the counter's high byte to move. A
# counter that reads 0 fails the calibration at once, and the guest uses the
# TSC frequency lguest_data gave it, as it would anyway.
PIT_CHANNEL2_PORT = 0x42
# Every port port_in/port_out answer differently from an absent one.
CLAIMED_PORTS = [(PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA + 3), (KBD_STATUS_PORT, KBD_STATUS_PORT),
                 (PIT_CHANNEL2_PORT, PIT_CHANNEL2_PORT)]
MAX_SLOTS = 32
# The PCI_CFG window's fields: plain storage, so the Switcher may keep the
# guest's writes to them (Linux 4.x's early console sets all three for
# every character it prints); the data register behind them exits, but for
# the console's emergency write, whose bytes the Switcher gathers.
KEPT_DWORDS = (PCI_CFG_BAR, PCI_CFG_OFFSET, PCI_CFG_LENGTH)
BAR_GAP = 1 << 20                        # BARs start 1 MiB above the end of RAM


def config_latch(fn: VirtioPciFunction, reg: int) -> int:
    """What the guest writes to CONFIG_ADDRESS to reach ``reg`` of ``fn``
    (bus 0, function 0; the low two bits clear)."""
    return PCI_CONFIG_ENABLE | fn.slot << 11 | reg


class PciBus:
    def __init__(self, devices: list[Device], mem: int, *, use_ioeventfd: bool = True,
                 console_first: bool = True) -> None:
        ordered = sorted(devices, key=lambda d: d.type != 3) if console_first else devices
        if len(ordered) >= MAX_SLOTS:
            raise ValueError(f"too many devices for one PCI bus ({MAX_SLOTS - 1} at most)")
        self.devices = ordered
        self.mem = mem
        self.use_ioeventfd = use_ioeventfd
        self.bridge = ConfigSpace.host_bridge()
        self.functions: list[VirtioPciFunction] = []
        self.bars: list[tuple[int, int]] = []   # (address, size) in slot order
        at = mem + BAR_GAP
        for dev in ordered:
            size = bar_size(DEVICE_CFG_OFFSET + len(dev.modern_config()))
            at = (at + size - 1) & ~(size - 1)
            self.bars.append((at, size))
            at += size
        self.limit = at                   # the first byte above every BAR
        self.ioeventfds: dict[VirtioPciFunction, list[tuple[int, int, int]]] = {}
        self.ioeventfd_failures = 0
        self.mmio_counts = {"notify": 0, "isr": 0, "common": 0, "device": 0}

    def install(self, host, memory: GuestMemory | None = None, vm=None) -> None:
        """Create the functions over ``host``'s memory and take over its
        port and MMIO hooks. ``vm`` (a kvm.Vm) enables ioeventfd."""
        self.host, self.vm = host, vm
        memory = memory if memory is not None else host.memory
        for slot, (dev, (bar, _size)) in enumerate(zip(self.devices, self.bars), start=1):
            fn = VirtioPciFunction(dev, slot, slot, bar, memory, host.interrupts.raise_irq,
                                   self.fault)
            fn.on_live, fn.on_reset = self._bind_kicks, self._unbind_kicks
            self.functions.append(fn)
        host.port_in, host.port_out = self.port_in, self.port_out
        host.fast.claim_ports(CLAIMED_PORTS)   # the others the Switcher may answer
        self.fast = host.fast
        self.address = 0
        # Console first (slot 1): it is the one whose window the guest uses early.
        kept = [(fn, reg) for fn in self.functions for reg in KEPT_DWORDS]
        kept = kept[:host.image.SW_PCI_MAX]
        self.kept = [(fn.config, reg) for fn, reg in kept]
        self.put_back()
        host.fast.keep_config_writes([config_latch(fn, reg) for fn, reg in kept])
        # The early console's bytes, gathered a line at a time by the
        # Switcher (one exit a line, not a character): only when the
        # console's window fields are entries 0-2 above.
        console = self.functions[0] if self.functions else None
        emergency = console.device.emergency_write_offset() if console else None
        if emergency is not None and kept[:3] == [(console, r) for r in KEPT_DWORDS]:
            host.fast.gather_emergency_writes(config_latch(console, PCI_CFG_DATA),
                                              DEVICE_CFG_OFFSET + emergency,
                                              console.device.emergency_write)
        host.on_mmio, host.mmio_kind = self.mmio, self.kind_of
        host.device_limit = self.limit         # PTEs may map the BARs

    # -- configuration cycles (ports) ----------------------------------------------
    @property
    def address(self) -> int:
        """The CONFIG_ADDRESS latch. It lives in the register page, where
        the Switcher writes it too (FastPath.keep_config_writes)."""
        return self.fast.pci_latch

    @address.setter
    def address(self, value: int) -> None:
        self.fast.pci_latch = value

    def take_back(self) -> None:
        """The kept dwords as the Switcher left them, into the functions'
        config spaces, before Python looks at any."""
        for i, (config, reg) in enumerate(self.kept):
            config.data[reg:reg + 4] = self.fast.kept(i).to_bytes(4, "little")

    def put_back(self) -> None:
        for i, (config, reg) in enumerate(self.kept):
            self.fast.set_kept(i, int.from_bytes(config.data[reg:reg + 4], "little"))

    def port_in(self, port: int, size: int) -> int:
        self.take_back()
        mask = (1 << (8 * size)) - 1
        if PCI_CONFIG_ADDRESS <= port < PCI_CONFIG_ADDRESS + 4:
            return (self.address >> (8 * (port - PCI_CONFIG_ADDRESS))) & mask
        if PCI_CONFIG_DATA <= port < PCI_CONFIG_DATA + 4:
            target = self._target(port, size)
            if target is None:
                return mask
            config, offset, width = target
            return config.read(offset, width)
        if port == KBD_STATUS_PORT:
            return 1
        if port == PIT_CHANNEL2_PORT:
            return 0
        return mask

    def port_out(self, port: int, size: int, value: int) -> bool:
        """False when the guest may not write there (a #GP for it)."""
        self.take_back()
        done = self._port_out(port, size, value)
        self.put_back()
        return done

    def _port_out(self, port: int, size: int, value: int) -> bool:
        if PCI_CONFIG_ADDRESS <= port < PCI_CONFIG_ADDRESS + 4:
            shift = 8 * (port - PCI_CONFIG_ADDRESS)
            mask = ((1 << (8 * size)) - 1) << shift & 0xFFFFFFFF
            self.address = (self.address & ~mask) | ((value << shift) & mask)
            return True
        if PCI_CONFIG_DATA <= port < PCI_CONFIG_DATA + 4:
            target = self._target(port, size)
            if target is None:
                return False
            config, offset, width = target
            return config.write(offset, width, value)
        return True                       # other ports: ignored, as on lguest

    def _target(self, port: int, size: int) -> tuple[ConfigSpace, int, int] | None:
        """Which function's config, at what byte, the latched address and
        this data port name; None for an absent or invalid target."""
        a = self.address
        bus, slot, func, reg = (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 7, a & 0xFC
        if not a & PCI_CONFIG_ENABLE or bus or func or reg >= 152:
            return None
        if slot == 0:
            config = self.bridge
        elif slot <= len(self.functions):
            config = self.functions[slot - 1].config
        else:
            return None
        byte = port - PCI_CONFIG_DATA
        return config, reg + byte, min(size, 4 - byte)   # never past the dword

    # -- BAR0 windows (MMIO) --------------------------------------------------------
    def mmio(self, addr: int, width: int, value: int | None) -> int:
        """A KVM_EXIT_MMIO: ``value`` is None for a read, which returns the data."""
        for fn in self.functions:
            base = fn.config.bar_address
            if base <= addr < base + fn.config.bar_bytes:
                offset = addr - base
                if offset + width > fn.mmio_size:
                    raise fn.fail(f"accessed BAR0 offset {offset} ({width} bytes), past its "
                                  f"{fn.mmio_size} bytes of registers")
                self.mmio_counts[register_kind(offset)] += 1
                if value is None:
                    return fn.read(offset, width)
                fn.write(offset, width, value)
                return 0
        raise GuestFault(f"guest accessed {addr:#x}, outside its memory and every device")

    def kind_of(self, addr: int) -> str:
        """A name for --stats: which register an MMIO exit touched."""
        for fn in self.functions:
            base = fn.config.bar_address
            if base <= addr < base + fn.config.bar_bytes:
                kind = register_kind(addr - base)
                return f"mmio {fn.name} {'config' if kind in ('common', 'device') else kind}"
        return "mmio unclaimed"

    # -- kicks without an exit -----------------------------------------------------
    def _bind_kicks(self, fn: VirtioPciFunction) -> None:
        if not self.use_ioeventfd or self.vm is None or fn.runner is None:
            return
        notify = fn.config.bar_address + NOTIFY_OFFSET
        bound = []
        try:
            for index, fd in enumerate(fn.runner.kick_fds):
                self.vm.ioeventfd(notify, 2, fd, datamatch=index)
                bound.append((notify, fd, index))
        except KvmError:
            self.ioeventfd_failures += 1   # the MMIO exit path still works
        self.ioeventfds[fn] = bound

    def _unbind_kicks(self, fn: VirtioPciFunction) -> None:
        for notify, fd, index in self.ioeventfds.pop(fn, []):
            try:
                self.vm.ioeventfd(notify, 2, fd, datamatch=index, deassign=True)
            except KvmError:
                pass

    # -- the end ------------------------------------------------------------------
    def fault(self, reason: str) -> None:
        self.host.stop("killed", reason)

    def shutdown(self) -> None:
        for fn in self.functions:
            fn.stop()


def register_kind(offset: int) -> str:
    """Which part of BAR0 an offset is in: notify, isr, device or common."""
    if offset == NOTIFY_OFFSET:
        return "notify"
    if offset == NOTIFY_OFFSET + 2:
        return "isr"
    return "device" if offset >= DEVICE_CFG_OFFSET else "common"
