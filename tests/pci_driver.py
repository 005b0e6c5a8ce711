"""A tiny virtio-PCI driver in Python, for testing the G3 bus without a
guest: configuration cycles through the bus's port hooks, BAR0 accesses
through its MMIO hook, and the bring-up sequence Linux's virtio_pci
(modern) follows."""
from __future__ import annotations

from launcher.virtio.pci_bus import PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA, PciBus
from launcher.virtio.pci_config import PCI_BASE_ADDRESS_0
from virtio_driver import FakeDriver

ACK, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8


class PciDriver:
    def __init__(self, bus: PciBus) -> None:
        self.bus = bus

    # -- configuration cycles, as arch/x86 conf1 does them ---------------------
    def cfg_read(self, slot: int, offset: int, size: int = 4) -> int:
        self.bus.port_out(PCI_CONFIG_ADDRESS, 4, 0x80000000 | slot << 11 | (offset & 0xFC))
        return self.bus.port_in(PCI_CONFIG_DATA + (offset & 3), size)

    def cfg_write(self, slot: int, offset: int, value: int, size: int = 4) -> bool:
        self.bus.port_out(PCI_CONFIG_ADDRESS, 4, 0x80000000 | slot << 11 | (offset & 0xFC))
        return self.bus.port_out(PCI_CONFIG_DATA + (offset & 3), size, value)

    # -- BAR0 --------------------------------------------------------------------
    def bar(self, slot: int) -> int:
        return self.cfg_read(slot, PCI_BASE_ADDRESS_0) & ~0xF

    def read(self, slot: int, offset: int, width: int) -> int:
        return self.bus.mmio(self.bar(slot) + offset, width, None)

    def write(self, slot: int, offset: int, width: int, value: int) -> None:
        self.bus.mmio(self.bar(slot) + offset, width, value)

    # -- bring-up -------------------------------------------------------------
    def negotiate(self, slot: int, accept: int | None = None) -> int:
        """Reset, ACK, DRIVER, features, FEATURES_OK and its read-back."""
        self.write(slot, 20, 1, 0)
        self.write(slot, 20, 1, ACK)
        self.write(slot, 20, 1, ACK | DRIVER)
        offered = 0
        for word in (0, 1):
            self.write(slot, 0, 4, word)
            offered |= self.read(slot, 4, 4) << (32 * word)
        accept = offered if accept is None else accept
        for word in (0, 1):
            self.write(slot, 8, 4, word)
            self.write(slot, 12, 4, (accept >> (32 * word)) & 0xFFFFFFFF)
        self.write(slot, 20, 1, ACK | DRIVER | FEATURES_OK)
        assert self.read(slot, 20, 1) & FEATURES_OK
        return offered

    def setup_queue(self, slot: int, index: int, ring: FakeDriver) -> None:
        self.write(slot, 22, 2, index)
        self.write(slot, 24, 2, ring.num)
        v = ring.vring
        for off, addr in ((32, v.desc), (40, v.avail), (48, v.used)):
            self.write(slot, off, 4, addr)
            self.write(slot, off + 4, 4, 0)
        self.write(slot, 28, 2, 1)

    def go(self, slot: int) -> None:
        self.write(slot, 20, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
