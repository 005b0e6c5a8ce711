"""The lguest bus: the G1/G2 virtio transport (docs/abi.md §9).

The guest finds its devices in one page at guest-physical ``mem`` (the
first page after the RAM its e820 reports): a packed list of descriptors,
each {type, num_vq, feature_len, config_len, status}, then its vqconfigs
{num, irq, pfn}, the offered and the accepted feature bitmaps, and the
config space. The rings follow, three pages each, in creation order, and
each virtqueue has its own IRQ, numbered from 1 (0 is the timer).

The guest speaks to the bus only through NOTIFY:
- a ring's address kicks that queue (the notify map makes this an eventfd
  write without leaving the vCPU thread's hypercall path);
- a descriptor's address says its status changed: 0 resets the device,
  FAILED stops it, and otherwise the device starts: G2 says so once, when
  the features are final; a G1 guest (Linux 2.6) notifies every status
  write (the earliest none but the reset), so there the device starts at
  DRIVER_OK or at the first kick of one of its rings, whichever comes first;
- any other address below the guest's memory is the early console's string.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import GuestFault
from ..memory import GuestMemory
from .device import Device, DeviceRunner
from .vring import Vring

PAGE = 4096
VQ_NUM = 256
RING_PAGES = 3                   # a 256-entry legacy ring with 4 KiB alignment
DESC_HEADER = 5
VQCONFIG = 8
FEATURE_LEN = 4                  # bytes per bitmap: bits 0-31
VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER = 1, 2
VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED = 4, 0x80
MAX_QUEUES = 31                  # one IRQ each, 1..31
EARLY_CONSOLE_MAX = 256


@dataclass
class BusSlot:
    device: Device
    desc: int                                      # gpa of its descriptor
    rings: list[int] = field(default_factory=list)  # gpa of each ring
    irqs: list[int] = field(default_factory=list)
    runner: DeviceRunner | None = None

    @property
    def status_at(self) -> int:
        return self.desc + 4

    @property
    def accepted_at(self) -> int:
        return self.desc + DESC_HEADER + VQCONFIG * len(self.rings) + FEATURE_LEN

    @property
    def config_at(self) -> int:
        return self.accepted_at + FEATURE_LEN


def pages_needed(devices: list[Device]) -> int:
    """Guest pages above RAM the bus uses: the descriptor page and the rings."""
    return 1 + RING_PAGES * sum(d.num_queues for d in devices)


class LguestBus:
    def __init__(self, devices: list[Device], early_console: BinaryIO | None = None,
                 start_on_kick: bool = False) -> None:
        if sum(d.num_queues for d in devices) > MAX_QUEUES:
            raise ValueError("too many virtqueues for the lguest bus (31 at most)")
        self.devices = devices
        self.early_console = early_console or sys.stdout.buffer
        self.start_on_kick = start_on_kick      # G1 (generations.py)
        self.slots: list[BusSlot] = []
        self.by_ring: dict[int, tuple[BusSlot, int]] = {}
        self.by_desc: dict[int, BusSlot] = {}

    def install(self, host, mem: int) -> None:
        """Write the device page at ``mem`` and hook NOTIFY; ``host`` is the
        lguest Host the devices raise interrupts through."""
        self.host, self.memory, self.mem = host, host.memory, mem
        memory: GuestMemory = self.memory
        page = bytearray(PAGE)
        at, ring, irq = 0, mem + PAGE, 1
        for dev in self.devices:
            config = dev.config()
            size = DESC_HEADER + VQCONFIG * dev.num_queues + 2 * FEATURE_LEN + len(config)
            if at + size >= PAGE:
                raise ValueError("the device descriptors do not fit in one page")
            slot = BusSlot(dev, mem + at)
            page[at:at + DESC_HEADER] = bytes([dev.type, dev.num_queues, FEATURE_LEN,
                                               len(config), 0])
            q = at + DESC_HEADER
            for _ in range(dev.num_queues):
                page[q:q + VQCONFIG] = VQ_NUM.to_bytes(2, "little") + irq.to_bytes(2, "little") \
                    + (ring // PAGE).to_bytes(4, "little")
                slot.rings.append(ring)
                slot.irqs.append(irq)
                self.by_ring[ring] = (slot, len(slot.rings) - 1)
                ring += RING_PAGES * PAGE
                irq += 1
                q += VQCONFIG
            page[q:q + FEATURE_LEN] = (dev.features() & 0xFFFFFFFF).to_bytes(4, "little")
            q += 2 * FEATURE_LEN
            page[q:q + len(config)] = config
            self.slots.append(slot)
            self.by_desc[slot.desc] = slot
            at += size
        memory.write(mem, bytes(page))
        host.on_notify = self.notify

    # -- NOTIFY ----------------------------------------------------------------
    def notify(self, value: int) -> None:
        hit = self.by_ring.get(value)
        if hit is not None:
            slot, index = hit
            if slot.runner is None and self.start_on_kick:
                self.start(slot)
            if slot.runner is not None:
                slot.runner.kick(index)
            return
        slot = self.by_desc.get(value)
        if slot is not None:
            self.status_changed(slot)
            return
        if value >= self.mem:
            raise GuestFault(f"NOTIFY {value:#x} names no device and lies beyond guest memory")
        limit = min(EARLY_CONSOLE_MAX, self.memory.size - value)
        text = self.memory.cstring(value, limit, "early console string")
        try:
            self.early_console.write(text)
            self.early_console.flush()
        except (OSError, ValueError):
            pass

    def status_changed(self, slot: BusSlot) -> None:
        status = self.memory.u8(slot.status_at)
        if status == 0:
            self.reset(slot)
        elif status & VIRTIO_CONFIG_S_FAILED:
            print(f"launcher: the guest's {slot.device.name} driver failed", file=sys.stderr)
            self.reset(slot)
        elif slot.runner is None:
            ready = VIRTIO_CONFIG_S_DRIVER_OK if self.start_on_kick else \
                VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK
            if status & ready:
                self.start(slot)
        elif not status & VIRTIO_CONFIG_S_DRIVER_OK and not self.start_on_kick:
            raise GuestFault(f"the {slot.device.name} device was started twice without a reset")

    def start(self, slot: BusSlot) -> None:
        accepted = self.memory.u32(slot.accepted_at)
        offered = slot.device.features()
        if accepted & ~offered:
            raise GuestFault(f"the {slot.device.name} driver accepted features "
                             f"{accepted & ~offered:#x} that were not offered")
        slot.device.accepted = accepted
        queues = [Vring(self.memory, ring, VQ_NUM, PAGE, f"{slot.device.name} queue {i}")
                  for i, ring in enumerate(slot.rings)]
        runner = DeviceRunner(slot.device, queues, slot.irqs,
                              self.host.interrupts.raise_irq, self.fault)
        for i, ring in enumerate(slot.rings):
            self.host.notify_map.add(ring, runner.kick_fds[i])
        slot.runner = runner
        runner.start()

    def reset(self, slot: BusSlot) -> None:
        runner, slot.runner = slot.runner, None
        if runner is not None:
            for ring in slot.rings:
                self.host.notify_map.remove(ring)
            runner.stop()
            for vq in runner.queues:
                vq.reset()
        self.memory.write(slot.accepted_at, bytes(FEATURE_LEN))

    def fault(self, reason: str) -> None:
        self.host.stop("killed", reason)

    def shutdown(self) -> None:
        for slot in self.slots:
            if slot.runner is not None:
                slot.runner.stop()
                slot.runner = None
