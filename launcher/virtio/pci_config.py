"""PCI configuration space of the G3 bus (docs/abi.md §10.2-10.3).

A G3 guest finds its devices the way a PC's BIOS-less Linux does: type-1
configuration cycles through ports 0xCF8 (address) and 0xCFC-0xCFF (data),
each an `in`/`out` that faults at ring 1 and reaches us through the Host's
#GP emulation. Every function's space is 152 bytes: the standard header,
then five vendor-specific capabilities that tell virtio_pci where in BAR0
the common config, notify register, ISR and device config live, and a
PCI_CFG capability whose window reaches BAR0 without a mapping (the early
console's way out).

``ConfigSpace`` holds one function's bytes and the rules for writing them;
the BAR0 registers behind the window belong to ``VirtioPciFunction``
(pci_function.py), and the bus that routes the ports is pci_bus.py.
"""
from __future__ import annotations

import struct
from typing import Protocol

from ..errors import GuestFault

CONFIG_SIZE = 152                       # the header plus our capability list

# The standard header.
PCI_VENDOR_ID, PCI_DEVICE_ID, PCI_COMMAND, PCI_STATUS = 0x00, 0x02, 0x04, 0x06
PCI_REVISION_ID, PCI_SUBCLASS, PCI_CLASS = 0x08, 0x0A, 0x0B
PCI_CACHE_LINE_SIZE, PCI_LATENCY_TIMER = 0x0C, 0x0D
PCI_BASE_ADDRESS_0, PCI_CARDBUS_CIS, PCI_SUBSYSTEM_ID, PCI_ROM_ADDRESS = 0x10, 0x28, 0x2E, 0x30
PCI_CAPABILITY_LIST, PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN = 0x34, 0x3C, 0x3D
PCI_STATUS_CAP_LIST = 0x0010
PCI_CAP_ID_VNDR = 0x09

PCI_VENDOR_ID_REDHAT_QUMRANET = 0x1AF4
VIRTIO_PCI_DEVICE_BASE = 0x1040         # + the virtio device type
VIRTIO_PCI_SUBSYSTEM_ID = 0x0040

# virtio capability types and where ours sit (a fixed chain, §10.3).
VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_ISR_CFG = 1, 2, 3
VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_PCI_CFG = 4, 5
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG = 0x40, 0x50, 0x64, 0x74, 0x84
CAP_LEN, NOTIFY_CAP_LEN, PCI_CFG_CAP_LEN = 16, 20, 20
# The PCI_CFG window's writable fields: {u8 bar @+4, u32 offset @+8,
# u32 length @+12} and the data register after the capability.
PCI_CFG_BAR, PCI_CFG_OFFSET, PCI_CFG_LENGTH, PCI_CFG_DATA = 0x88, 0x8C, 0x90, 0x94

# BAR0 (struct virtio_pci_mmio in the original Launcher): common config,
# then the notify register, the ISR byte, a pad byte and the device config.
COMMON_CFG_SIZE = 56
NOTIFY_OFFSET, ISR_OFFSET, DEVICE_CFG_OFFSET = 56, 58, 60

# Class codes: console 07/00, net 02/00, block 01/80, rng FF/00 (§10.3).
CLASS_BY_TYPE = {3: (0x07, 0x00), 1: (0x02, 0x00), 2: (0x01, 0x80), 4: (0xFF, 0x00)}


class Bar0(Protocol):
    """What the PCI_CFG window reaches: BAR0's registers."""

    mmio_size: int

    def read(self, offset: int, width: int) -> int: ...

    def write(self, offset: int, width: int, value: int) -> None: ...


def bar_size(mmio_size: int) -> int:
    """A BAR is a power of two: the smallest one holding ``mmio_size``."""
    size = 16
    while size < mmio_size:
        size <<= 1
    return size


class ConfigSpace:
    """One function's 152 bytes. ``read``/``write`` take a byte offset and
    a width of 1, 2 or 4 that stays inside one dword (the bus clips it)."""

    def __init__(self, data: bytearray, bar0: Bar0 | None = None, bar_bytes: int = 0) -> None:
        assert len(data) == CONFIG_SIZE
        self.data = data
        self.bar0 = bar0
        self.bar_bytes = bar_bytes       # BAR0's size: the low bits read back as 0

    # -- building ------------------------------------------------------------
    @classmethod
    def host_bridge(cls) -> "ConfigSpace":
        """Slot 0: all zero but the class (host bridge), which the guest's
        PCI probe looks for; vendor 0 keeps Linux from enumerating it."""
        data = bytearray(CONFIG_SIZE)
        data[PCI_CLASS], data[PCI_SUBCLASS] = 0x06, 0x00
        return cls(data)

    @classmethod
    def virtio(cls, device_type: int, irq_line: int, bar_address: int, config_len: int,
               bar0: Bar0) -> "ConfigSpace":
        """A virtio 1.0 (non-transitional) function whose registers are all
        in BAR0 at ``bar_address``."""
        data = bytearray(CONFIG_SIZE)
        size = bar_size(DEVICE_CFG_OFFSET + config_len)
        if bar_address % size:
            raise ValueError(f"BAR0 at {bar_address:#x} is not aligned to its size {size:#x}")
        klass, subclass = CLASS_BY_TYPE.get(device_type, (0xFF, 0x00))
        struct.pack_into("<HHHH", data, 0, PCI_VENDOR_ID_REDHAT_QUMRANET,
                         VIRTIO_PCI_DEVICE_BASE + device_type, 0, PCI_STATUS_CAP_LIST)
        data[PCI_REVISION_ID] = 1
        data[PCI_SUBCLASS], data[PCI_CLASS] = subclass, klass
        struct.pack_into("<I", data, PCI_BASE_ADDRESS_0, bar_address)
        struct.pack_into("<H", data, PCI_SUBSYSTEM_ID, VIRTIO_PCI_SUBSYSTEM_ID)
        data[PCI_CAPABILITY_LIST] = CAP_COMMON
        data[PCI_INTERRUPT_LINE], data[PCI_INTERRUPT_PIN] = irq_line, 0
        after_window = CAP_DEVICE if config_len else 0
        _cap(data, CAP_COMMON, CAP_NOTIFY, CAP_LEN, VIRTIO_PCI_CAP_COMMON_CFG, 0, COMMON_CFG_SIZE)
        _cap(data, CAP_NOTIFY, CAP_ISR, NOTIFY_CAP_LEN, VIRTIO_PCI_CAP_NOTIFY_CFG,
             NOTIFY_OFFSET, 2)
        struct.pack_into("<I", data, CAP_NOTIFY + CAP_LEN, 0)    # notify_off_multiplier
        _cap(data, CAP_ISR, CAP_PCI_CFG, CAP_LEN, VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1)
        _cap(data, CAP_PCI_CFG, after_window, PCI_CFG_CAP_LEN, VIRTIO_PCI_CAP_PCI_CFG, 0, 0)
        if config_len:
            _cap(data, CAP_DEVICE, 0, CAP_LEN, VIRTIO_PCI_CAP_DEVICE_CFG,
                 DEVICE_CFG_OFFSET, config_len)
        return cls(data, bar0, size)

    # -- the guest's accesses --------------------------------------------------
    def read(self, offset: int, width: int) -> int:
        if offset & ~3 == PCI_CFG_DATA and self.bar0 is not None:
            # Reading the window performs the BAR0 read it describes.
            bar_off, length = self.window("read")
            value = self.bar0.read(bar_off, length)
            struct.pack_into("<I", self.data, PCI_CFG_DATA, value)
        return int.from_bytes(self.data[offset:offset + width], "little")

    def write(self, offset: int, width: int, value: int) -> bool:
        """Apply a write; False if the guest may not write there (the
        Launcher then reflects a #GP, as the original did)."""
        dword = offset & ~3
        if self.bar0 is None:
            return False                          # the host bridge is read-only
        if dword == PCI_BASE_ADDRESS_0:
            self._store(offset, width, value)
            bar = struct.unpack_from("<I", self.data, dword)[0] & ~(self.bar_bytes - 1)
            struct.pack_into("<I", self.data, dword, bar)   # sizing: low bits read 0
            return True
        if PCI_BASE_ADDRESS_0 < dword <= PCI_CARDBUS_CIS or dword == PCI_ROM_ADDRESS:
            return True     # BAR1-5, ROM: not implemented, so hardwired to zero
        if dword == PCI_CACHE_LINE_SIZE:
            # Cache line size and latency timer only; header type and BIST stay.
            end = min(offset + width, PCI_LATENCY_TIMER + 1)
            if offset < end:
                self._store(offset, end - offset, value)
            return True
        if dword == PCI_COMMAND and width == 2:
            return True                           # command/status: accepted, ignored
        if dword in (PCI_CFG_BAR, PCI_CFG_OFFSET, PCI_CFG_LENGTH):
            self._store(offset, width, value)
            return True
        if dword == PCI_CFG_DATA:
            try:
                bar_off, length = self.window("write")
            except GuestFault:
                return False
            self._store(offset, width, value)
            data = struct.unpack_from("<I", self.data, PCI_CFG_DATA)[0]
            self.bar0.write(bar_off, length, data & ((1 << (8 * length)) - 1))
            return True
        return False

    def window(self, doing: str) -> tuple[int, int]:
        """The PCI_CFG window's (BAR0 offset, length), if the driver set it
        up validly: BAR 0, length 1, 2 or 4, aligned, inside the registers."""
        bar = self.data[PCI_CFG_BAR]
        offset, length = struct.unpack_from("<II", self.data, PCI_CFG_OFFSET)
        if (bar != 0 or length not in (1, 2, 4) or offset % length
                or offset + length > self.bar0.mmio_size):
            raise GuestFault(f"PCI_CFG window {doing} with bar {bar}, offset {offset}, "
                             f"length {length}")
        return offset, length

    def _store(self, offset: int, width: int, value: int) -> None:
        self.data[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(
            width, "little")

    @property
    def bar_address(self) -> int:
        return struct.unpack_from("<I", self.data, PCI_BASE_ADDRESS_0)[0]


def _cap(data: bytearray, at: int, nxt: int, length: int, cfg_type: int, offset: int,
         size: int) -> None:
    """One virtio_pci_cap: {id, next, len, cfg_type, bar 0, pad[3], offset, length}."""
    struct.pack_into("<BBBBB3xII", data, at, PCI_CAP_ID_VNDR, nxt, length, cfg_type, 0,
                     offset, size)
