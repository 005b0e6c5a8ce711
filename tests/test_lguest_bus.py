"""The lguest bus transport on a fake Host: the device page, status
notifications starting and resetting devices, kicks through the notify map,
interrupts per virtqueue, the early console."""
import io
import struct
import time

import pytest

from fakes import FakeMachine
from launcher.errors import GuestFault
from launcher.host import Host
from launcher.virtio.block import Block
from launcher.virtio.lguest_bus import LguestBus, pages_needed
from launcher.virtio.rng import Rng
from virtio_driver import FakeDriver

MEM = 2 << 20


@pytest.fixture
def bus(tmp_path):
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(4096))
    devices = [Block(str(disk)), Rng()]
    m = FakeMachine(MEM + pages_needed(devices) * 4096)
    host = Host(m)
    raised = []
    host.interrupts.raise_irq = raised.append
    early = io.BytesIO()
    b = LguestBus(devices, early_console=early)
    b.install(host, MEM)
    b.raised, b.early = raised, early
    yield b
    b.shutdown()


def test_device_page_layout(bus):
    m = bus.memory
    # block: type 2, 1 vq, 4-byte bitmaps, 16 bytes of config
    assert m.read(MEM, 5) == bytes([2, 1, 4, 16, 0])
    num, irq, pfn = struct.unpack("<HHI", m.read(MEM + 5, 8))
    assert (num, irq, pfn) == (256, 1, (MEM + 4096) >> 12)
    assert m.u32(MEM + 13) == bus.devices[0].features()
    assert struct.unpack("<Q", m.read(MEM + 21, 8))[0] == 8        # capacity in sectors
    rng = MEM + 5 + 8 + 8 + 16
    assert m.read(rng, 5) == bytes([4, 1, 4, 0, 0])
    assert struct.unpack("<HHI", m.read(rng + 5, 8)) == (256, 2, (MEM + 4 * 4096) >> 12)
    assert m.u8(rng + 5 + 8 + 8) == 0                              # terminator


def test_status_starts_device_and_kicks_reach_it(bus):
    slot = bus.slots[1]                       # rng
    d = FakeDriver(bus.memory, slot.rings[0], num=256, data=0x100000)
    bus.memory.set_u8(slot.status_at, 3)      # ACK | DRIVER: features finalized
    bus.host.notify(slot.desc)
    assert slot.runner is not None
    d.offer([], [16])
    bus.host.notify(slot.rings[0])            # a notify-map hit: eventfd
    deadline = time.monotonic() + 5
    while not bus.raised and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bus.raised == [2] and d.used() == [(0, 16)]
    with pytest.raises(GuestFault, match="twice"):
        bus.host.notify(slot.desc)
    bus.memory.set_u8(slot.status_at, 0)
    bus.host.notify(slot.desc)                # reset
    assert slot.runner is None and bus.memory.u16(slot.rings[0] + 16 * 256 + 2) == 0


def test_unoffered_features_kill(bus):
    slot = bus.slots[1]
    bus.memory.set_u32(slot.accepted_at, 1 << 7)
    bus.memory.set_u8(slot.status_at, 3)
    with pytest.raises(GuestFault, match="not offered"):
        bus.host.notify(slot.desc)


def test_early_console_and_notify_beyond_memory(bus):
    bus.memory.write(0x3000, b"early\0")
    bus.host.notify(0x3000)
    assert bus.early.getvalue() == b"early"
    with pytest.raises(GuestFault, match="beyond guest memory"):
        bus.host.notify(MEM + 0x100000)


def test_a_bad_chain_in_a_device_thread_kills_the_guest(bus):
    slot = bus.slots[0]
    d = FakeDriver(bus.memory, slot.rings[0], num=256, data=0x100000)
    bus.memory.set_u8(slot.status_at, 3)
    bus.host.notify(slot.desc)
    d.desc(0, 0x100000, 16, 1, 0)             # a chain that loops on itself
    d.publish(0)
    bus.host.notify(slot.rings[0])
    deadline = time.monotonic() + 5
    while bus.host.outcome is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bus.host.outcome.kind == "killed" and "loops" in bus.host.outcome.message


def test_g1_starts_a_device_at_driver_ok_or_at_its_first_kick(bus):
    """Linux 2.6 notifies every status write (or none but the reset): the
    device must not start before the accepted features are final."""
    bus.start_on_kick = True
    blk, rng = bus.slots
    for status in (1, 3):                     # ACK, DRIVER: too early
        bus.memory.set_u8(blk.status_at, status)
        bus.host.notify(blk.desc)
        assert blk.runner is None
    bus.memory.set_u8(blk.status_at, 7)       # DRIVER_OK
    bus.host.notify(blk.desc)
    assert blk.runner is not None
    d = FakeDriver(bus.memory, rng.rings[0], num=256, data=0x100000)
    d.offer([], [16])
    bus.host.notify(rng.rings[0])             # a kick, never a status: starts it
    assert rng.runner is not None
    deadline = time.monotonic() + 5
    while not bus.raised and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bus.raised == [2] and d.used() == [(0, 16)]


def test_the_first_virtio_descriptors_linux_2_6_24_reads(tmp_path):
    """{type, config_len, status}, then typed fields: a VIRTQUEUE one per
    queue, the block device's capacity; devices start at their first kick."""
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(4096))
    devices = [Block(str(disk)), Rng()]
    m = FakeMachine(MEM + pages_needed(devices) * 4096)
    host = Host(m)
    b = LguestBus(devices, early_console=io.BytesIO(), start_on_kick=True, first_virtio=True)
    b.install(host, MEM)
    try:
        mem = b.memory
        assert mem.read(MEM, 3) == bytes([2, 10 + 10, 0])            # block: 2 fields
        assert mem.read(MEM + 3, 2) == bytes([2, 8])                 # VIRTQUEUE, 8 bytes
        assert struct.unpack("<HHI", mem.read(MEM + 5, 8)) == (256, 1, (MEM + 4096) >> 12)
        assert mem.read(MEM + 13, 2) == bytes([0x41, 8])             # capacity
        assert struct.unpack("<Q", mem.read(MEM + 15, 8))[0] == 8
        rng = MEM + 23
        assert mem.read(rng, 3) == bytes([4, 10, 0])
        assert struct.unpack("<HHI", mem.read(rng + 5, 8)) == (256, 2, (MEM + 4 * 4096) >> 12)
        assert mem.u8(rng + 13) == 0                                  # terminator
        assert b.slots[0].status_at == MEM + 2
        b.host.notify(b.slots[0].rings[0])
        assert b.slots[0].runner is not None and devices[0].accepted == 0
    finally:
        b.shutdown()
