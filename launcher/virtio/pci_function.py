"""One virtio 1.0 PCI function: the registers in its BAR0 (docs/abi.md §10.4).

The driver brings a device up through the common config: it resets it
(status 0), sets ACKNOWLEDGE and DRIVER, reads the offered features 32 bits
at a time and writes the ones it accepts, sets FEATURES_OK and reads the
status back, describes each queue (size, then where its three parts are)
and enables it, and finally sets DRIVER_OK, which starts the device's
thread. From then on the guest kicks a queue by writing its index to the
notify register, and the device interrupts by setting the ISR bit and
raising the function's INTERRUPT_LINE; the guest's handler reads (and so
clears) the ISR, then looks at every queue.

Each field must be accessed at its own width and only in the order the
virtio spec allows; any other access is a driver bug the original Launcher
killed the guest for, and so do we, with a reason naming the field.

Next: pci_bus.py puts these functions on the bus and routes accesses here.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Callable

from ..errors import GuestFault
from ..memory import GuestMemory
from .device import Device, DeviceRunner
from .pci_config import (COMMON_CFG_SIZE, DEVICE_CFG_OFFSET, ISR_OFFSET, NOTIFY_OFFSET,
                         ConfigSpace)
from .vring import Vring

VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ANY_LAYOUT = 27                # implied by VERSION_1, so not offered
VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER = 1, 2
VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK = 4, 8
VIRTIO_CONFIG_S_FAILED = 0x80
VIRTIO_MSI_NO_VECTOR = 0xFFFF
DEFAULT_QUEUE_SIZE = 256
STATUS_ORDER = (VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER,
                VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER_OK)

# struct virtio_pci_common_cfg: offset -> (name, width).
COMMON_FIELDS: dict[int, tuple[str, int]] = {
    0: ("device_feature_select", 4), 4: ("device_feature", 4),
    8: ("guest_feature_select", 4), 12: ("guest_feature", 4),
    16: ("msix_config", 2), 18: ("num_queues", 2),
    20: ("device_status", 1), 21: ("config_generation", 1),
    22: ("queue_select", 2), 24: ("queue_size", 2),
    26: ("queue_msix_vector", 2), 28: ("queue_enable", 2),
    30: ("queue_notify_off", 2),
    32: ("queue_desc_lo", 4), 36: ("queue_desc_hi", 4),
    40: ("queue_avail_lo", 4), 44: ("queue_avail_hi", 4),
    48: ("queue_used_lo", 4), 52: ("queue_used_hi", 4),
    NOTIFY_OFFSET: ("notify", 2), ISR_OFFSET: ("isr", 1), ISR_OFFSET + 1: ("padding", 1),
}
QUEUE_ADDRESS_FIELDS = {32: "desc_lo", 36: "desc_hi", 40: "avail_lo", 44: "avail_hi",
                        48: "used_lo", 52: "used_hi"}
FEATURE_FIELDS = (0, 4, 8, 12)


@dataclass
class QueueConfig:
    """What the driver told us about one queue."""
    size: int = DEFAULT_QUEUE_SIZE
    enable: int = 0
    desc_lo: int = 0
    desc_hi: int = 0
    avail_lo: int = 0
    avail_hi: int = 0
    used_lo: int = 0
    used_hi: int = 0
    vring: Vring | None = None


class VirtioPciFunction:
    """BAR0 of one device. ``raise_irq(line)`` interrupts the guest;
    ``on_fault(reason)`` ends it from a device thread; ``on_live`` and
    ``on_reset`` let the bus (un)register notify eventfds."""

    def __init__(self, device: Device, slot: int, irq_line: int, bar_address: int,
                 memory: GuestMemory, raise_irq: Callable[[int], None],
                 on_fault: Callable[[str], None]) -> None:
        self.device, self.slot, self.irq_line = device, slot, irq_line
        self.memory, self._raise_irq, self.on_fault = memory, raise_irq, on_fault
        self.features = (device.modern_features() & ~(1 << VIRTIO_F_ANY_LAYOUT)) \
            | (1 << VIRTIO_F_VERSION_1)
        self.device_config = bytearray(device.modern_config())
        self.mmio_size = DEVICE_CFG_OFFSET + len(self.device_config)
        self.config = ConfigSpace.virtio(device.type, irq_line, bar_address,
                                         len(self.device_config), self)
        self.queues = [QueueConfig() for _ in range(device.num_queues)]
        self.runner: DeviceRunner | None = None
        self.on_live: Callable[["VirtioPciFunction"], None] = lambda f: None
        self.on_reset: Callable[["VirtioPciFunction"], None] = lambda f: None
        self._isr_lock = threading.Lock()
        self._reset_registers()

    @property
    def name(self) -> str:
        return self.device.name

    def _reset_registers(self) -> None:
        self.status = 0
        self.accepted = 0
        self.device_feature_select = self.guest_feature_select = 0
        self.queue_select = 0
        self.wrote_features_ok = False   # FEATURES_OK set but not yet read back
        self.isr = 0
        self.last_notify = 0
        for q in self.queues:
            q.size, q.enable, q.vring = DEFAULT_QUEUE_SIZE, 0, None
            q.desc_lo = q.desc_hi = q.avail_lo = q.avail_hi = q.used_lo = q.used_hi = 0

    def fail(self, what: str) -> GuestFault:
        return GuestFault(f"the {self.name} driver (PCI slot {self.slot}) {what}")

    # -- reads -------------------------------------------------------------
    def read(self, offset: int, width: int) -> int:
        if offset >= DEVICE_CFG_OFFSET:
            return self._read_device_config(offset, width)
        name = self._field(offset, width, "read")
        if offset in FEATURE_FIELDS:
            self._need(VIRTIO_CONFIG_S_DRIVER, f"read {name}")
            if name == "device_feature":
                if self.device_feature_select > 1:
                    return 0
                return (self.features >> (32 * self.device_feature_select)) & 0xFFFFFFFF
            if name == "guest_feature":
                return (self.accepted >> (32 * self.guest_feature_select)) & 0xFFFFFFFF
            return getattr(self, name)
        if name == "device_status":
            self.wrote_features_ok = False          # the driver checked: fine
            return self.status
        if name == "isr":
            with self._isr_lock:                    # read-and-clear vs the device thread
                isr, self.isr = self.isr, 0
            return isr
        if name == "num_queues":
            return len(self.queues)
        if name == "config_generation":
            return 0                                # our configs never change
        if name == "queue_select":
            return self.queue_select
        if name == "queue_msix_vector":
            return VIRTIO_MSI_NO_VECTOR
        if name == "queue_notify_off":
            return 0
        if name == "notify":
            self._need(VIRTIO_CONFIG_S_DRIVER_OK, "read the notify register")
            return self.last_notify
        if name in ("msix_config", "padding"):
            raise self.fail(f"read {name} (there is no MSI-X)" if name == "msix_config"
                            else "read the padding after the ISR")
        q = self._selected()
        if q is None:
            return 0                                # no such queue: size 0 says so
        if name == "queue_size":
            return q.size
        if name == "queue_enable":
            return q.enable
        return getattr(q, QUEUE_ADDRESS_FIELDS[offset])

    def _read_device_config(self, offset: int, width: int) -> int:
        at = offset - DEVICE_CFG_OFFSET
        if width not in (1, 2, 4) or offset + width > self.mmio_size:
            raise self.fail(f"read {width} bytes of device config at offset {at}, past "
                            f"its {len(self.device_config)} bytes")
        self._need(VIRTIO_CONFIG_S_DRIVER, "read device config")
        return int.from_bytes(self.device_config[at:at + width], "little")

    # -- writes -------------------------------------------------------------
    def write(self, offset: int, width: int, value: int) -> None:
        if offset >= DEVICE_CFG_OFFSET:
            self._write_device_config(offset, width, value)
            return
        name = self._field(offset, width, "write")
        if offset in FEATURE_FIELDS:
            self._write_feature(name, value)
        elif name == "device_status":
            self._write_status(value)
        elif name == "queue_select":
            self.queue_select = value
        elif name == "queue_size":
            q = self._queue_for("queue_size")
            if value == 0 or value & (value - 1) or value > 32768:
                raise self.fail(f"wrote queue_size {value}, not a power of two up to 32768")
            if q.enable:
                raise self.fail(f"changed queue_size of live queue {self.queue_select}")
            q.size = value
        elif name == "queue_enable":
            self._enable_queue(value)
        elif name in ("queue_desc_lo", "queue_desc_hi", "queue_avail_lo", "queue_avail_hi",
                      "queue_used_lo", "queue_used_hi"):
            q = self._queue_for(name)
            if q.enable:
                raise self.fail(f"wrote {name} of live queue {self.queue_select}")
            self._need(VIRTIO_CONFIG_S_FEATURES_OK, f"wrote {name}")
            if self.wrote_features_ok:
                raise self.fail(f"wrote {name} without reading FEATURES_OK back")
            setattr(q, QUEUE_ADDRESS_FIELDS[offset], value)
        elif name == "notify":
            self.notify(value)
        else:
            raise self.fail(f"wrote {value:#x} to the read-only {name}")

    def _write_feature(self, name: str, value: int) -> None:
        self._need(VIRTIO_CONFIG_S_DRIVER, f"wrote {name}")
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK:
            raise self.fail(f"wrote {name} after FEATURES_OK")
        if name == "device_feature_select":
            self.device_feature_select = value
        elif name == "guest_feature_select":
            if value > 1:
                raise self.fail(f"selected feature word {value} (there are 2)")
            self.guest_feature_select = value
        elif name == "guest_feature":
            shift = 32 * self.guest_feature_select
            accepted = (self.accepted & ~(0xFFFFFFFF << shift)) | (value << shift)
            if accepted & ~self.features:
                raise self.fail(f"accepted features {accepted & ~self.features:#x} that "
                                "were not offered")
            self.accepted = accepted
        else:
            raise self.fail(f"wrote {value:#x} to the read-only {name}")

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        if value & VIRTIO_CONFIG_S_FAILED:
            print(f"launcher: the guest's {self.name} driver failed", file=sys.stderr)
            self.stop()
            self.status = value
            return
        if self.status & ~value:
            raise self.fail(f"cleared device status bits {self.status:#x} -> {value:#x}")
        added = value & ~self.status
        if added not in STATUS_ORDER or self.status != sum(
                STATUS_ORDER[:STATUS_ORDER.index(added)]):
            raise self.fail(f"made the status transition {self.status:#x} -> {value:#x} "
                            "(bits go ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, one at "
                            "a time)")
        if added == VIRTIO_CONFIG_S_FEATURES_OK:
            self.wrote_features_ok = True
        elif added == VIRTIO_CONFIG_S_DRIVER_OK:
            if self.wrote_features_ok:
                raise self.fail("set DRIVER_OK without reading FEATURES_OK back")
            self.status = value
            self.start()
        self.status = value

    def _enable_queue(self, value: int) -> None:
        q = self._queue_for("queue_enable")
        if value != 1:
            raise self.fail(f"wrote queue_enable {value} (only 1 is allowed)")
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK:
            raise self.fail(f"enabled queue {self.queue_select} after DRIVER_OK")
        self._need(VIRTIO_CONFIG_S_FEATURES_OK, "enabled a queue")
        if q.desc_hi or q.avail_hi or q.used_hi:
            raise self.fail(f"put queue {self.queue_select} above 4 GiB")
        try:
            vring = Vring.split(self.memory, q.size, f"queue {self.queue_select}",
                                q.desc_lo, q.avail_lo, q.used_lo)
        except GuestFault as exc:
            raise self.fail(f"set up {exc}") from None
        vring.name = f"{self.name} queue {self.queue_select}"   # for the device thread
        if self.memory.u16(q.used_lo):
            raise self.fail(f"enabled queue {self.queue_select} with used.flags "
                            f"{self.memory.u16(q.used_lo):#x} (must start 0)")
        q.vring, q.enable = vring, 1

    def _write_device_config(self, offset: int, width: int, value: int) -> None:
        at = offset - DEVICE_CFG_OFFSET
        emergency = self.device.emergency_write_offset()
        if emergency is not None and at == emergency and width == 4:
            self.device.emergency_write(bytes([value & 0xFF]))
            return
        raise self.fail(f"wrote {width} bytes to device config at offset {at}")

    # -- queue kicks and interrupts -----------------------------------------------------
    def notify(self, index: int) -> None:
        """The guest kicked queue ``index`` (the Python path; with ioeventfd
        KVM writes the queue's eventfd without leaving the kernel)."""
        if index >= len(self.queues):
            raise self.fail(f"notified queue {index} (it has {len(self.queues)})")
        self.last_notify = index
        if self.runner is not None:
            self.runner.kick(index)
        # Before DRIVER_OK nothing runs yet; the thread looks at every
        # queue when it starts, so an early kick is not lost.

    def interrupt(self, _irq: int) -> None:
        """From the device thread: ISR bit 0, then the function's line."""
        with self._isr_lock:
            self.isr |= 1
        self._raise_irq(self.irq_line)

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> None:
        for i, q in enumerate(self.queues):
            if q.vring is None:
                raise self.fail(f"set DRIVER_OK with queue {i} not enabled")
        self.device.accepted = self.accepted
        self.runner = DeviceRunner(self.device, [q.vring for q in self.queues],
                                   [self.irq_line] * len(self.queues), self.interrupt,
                                   self.on_fault)
        self.on_live(self)
        self.runner.start()

    def stop(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            self.on_reset(self)
            runner.stop()

    def reset(self) -> None:
        self.stop()
        self._reset_registers()

    # -- helpers --------------------------------------------------------------------
    def _field(self, offset: int, width: int, doing: str) -> str:
        field = COMMON_FIELDS.get(offset)
        if field is None or field[1] != width:
            what = f"offset {offset}" if field is None else field[0]
            raise self.fail(f"did a {width}-byte {doing} of {what} in BAR0 (fields must be "
                            "accessed whole, at their own width)")
        return field[0]

    def _need(self, bit: int, doing: str) -> None:
        if not self.status & bit:
            names = {VIRTIO_CONFIG_S_DRIVER: "DRIVER", VIRTIO_CONFIG_S_FEATURES_OK:
                     "FEATURES_OK", VIRTIO_CONFIG_S_DRIVER_OK: "DRIVER_OK"}
            raise self.fail(f"{doing} before setting {names[bit]}")

    def _selected(self) -> QueueConfig | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _queue_for(self, name: str) -> QueueConfig:
        q = self._selected()
        if q is None:
            raise self.fail(f"wrote {name} with queue_select {self.queue_select}, "
                            "which names no queue")
        return q


assert COMMON_CFG_SIZE == NOTIFY_OFFSET
