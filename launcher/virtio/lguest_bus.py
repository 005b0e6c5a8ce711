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

Linux 2.6.24 speaks the first virtio (``first_virtio``): its descriptor is
{type, config_len, status}, and everything else is a list of typed fields
{type, len, data}: one VIRTQUEUE field (a vqconfig) per queue, then the
device's own (a block device's capacity, a network card's MAC). It asks
for no features and reports no status; its devices start at their first
kick, and its network header is two bytes shorter (virtio/net.py).
"""
from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import GuestFault
from ..memory import GuestMemory
from .block import VIRTIO_ID_BLOCK
from .device import Device, DeviceRunner
from .net import VIRTIO_ID_NET, VIRTIO_NET_F_MAC
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
# The first virtio (Linux 2.6.24): typed fields after a 3-byte header.
VIRTIO_CONFIG_F_VIRTQUEUE = 2
FIRST_FIELD_CAPACITY = 0x41      # block: u64 sectors (VIRTIO_CONFIG_BLK_F_CAPACITY)
FIRST_FIELD_MAC = 0x41           # net: six bytes (VIRTIO_CONFIG_NET_MAC_F)
EARLY_CONSOLE_MAX = 256


@dataclass
class BusSlot:
    device: Device
    desc: int                                      # gpa of its descriptor
    rings: list[int] = field(default_factory=list)  # gpa of each ring
    irqs: list[int] = field(default_factory=list)
    runner: DeviceRunner | None = None
    status_offset: int = 4                         # 2 in the first virtio's descriptor

    @property
    def status_at(self) -> int:
        return self.desc + self.status_offset

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
                 start_on_kick: bool = False, first_virtio: bool = False) -> None:
        if sum(d.num_queues for d in devices) > MAX_QUEUES:
            raise ValueError("too many virtqueues for the lguest bus (31 at most)")
        self.devices = devices
        self.early_console = early_console or sys.stdout.buffer
        self.start_on_kick = start_on_kick      # G1 (generations.py)
        self.first_virtio = first_virtio        # Linux 2.6.24 (generations.py)
        for dev in devices:
            dev.first_virtio = first_virtio
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
        describe = first_virtio_descriptor if self.first_virtio else descriptor
        for dev in self.devices:
            rings = [ring + i * RING_PAGES * PAGE for i in range(dev.num_queues)]
            irqs = list(range(irq, irq + dev.num_queues))
            desc = describe(dev, rings, irqs)
            if at + len(desc) >= PAGE:
                raise ValueError("the device descriptors do not fit in one page")
            page[at:at + len(desc)] = desc
            slot = BusSlot(dev, mem + at, rings, irqs,
                           status_offset=2 if self.first_virtio else 4)
            for i, r in enumerate(rings):
                self.by_ring[r] = (slot, i)
            self.slots.append(slot)
            self.by_desc[slot.desc] = slot
            at += len(desc)
            ring, irq = ring + RING_PAGES * PAGE * len(rings), irq + len(rings)
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
        # The first virtio has no feature bitmaps: nothing offered, nothing taken.
        accepted = 0 if self.first_virtio else self.memory.u32(slot.accepted_at)
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
        if not self.first_virtio:
            self.memory.write(slot.accepted_at, bytes(FEATURE_LEN))

    def fault(self, reason: str) -> None:
        self.host.stop("killed", reason)

    def shutdown(self) -> None:
        for slot in self.slots:
            if slot.runner is not None:
                slot.runner.stop()
                slot.runner = None


def descriptor(dev: Device, rings: list[int], irqs: list[int]) -> bytes:
    """A device as Linux 2.6.25 and later read it (docs/abi.md §9.1): the
    header, a vqconfig per queue, the offered and (empty) accepted
    feature bitmaps, the config space."""
    config = dev.config()
    out = bytearray([dev.type, dev.num_queues, FEATURE_LEN, len(config), 0])
    for r, irq in zip(rings, irqs):
        out += struct.pack("<HHI", VQ_NUM, irq, r // PAGE)
    out += (dev.features() & 0xFFFFFFFF).to_bytes(FEATURE_LEN, "little") + bytes(FEATURE_LEN)
    return bytes(out + config)


def first_virtio_descriptor(dev: Device, rings: list[int], irqs: list[int]) -> bytes:
    """A device as Linux 2.6.24 reads it (docs/abi.md §9.7): {type,
    config_len, status} and typed fields, a VIRTQUEUE one per queue, then
    what the driver looks up."""
    fields = bytearray()
    for r, irq in zip(rings, irqs):
        fields += bytes([VIRTIO_CONFIG_F_VIRTQUEUE, VQCONFIG]) + struct.pack(
            "<HHI", VQ_NUM, irq, r // PAGE)
    config = dev.config()
    if dev.type == VIRTIO_ID_BLOCK:
        fields += bytes([FIRST_FIELD_CAPACITY, 8]) + config[:8]
    elif dev.type == VIRTIO_ID_NET and dev.features() >> VIRTIO_NET_F_MAC & 1:
        fields += bytes([FIRST_FIELD_MAC, 6]) + config[:6]
    if len(fields) > 255:
        raise ValueError(f"{dev.name}: too many fields for a first-virtio descriptor")
    return bytes([dev.type, len(fields), 0]) + fields
