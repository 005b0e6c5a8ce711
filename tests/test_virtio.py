"""The virtqueue and the devices on fabricated guest memory (no KVM)."""
import io
import os
import struct

import pytest

from launcher.errors import GuestFault, UserError
from launcher.memory import GuestMemory
from launcher.virtio import block as B
from launcher.virtio.console import Console
from launcher.virtio.rng import Rng
from launcher.virtio.vring import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, Vring, scatter
from virtio_driver import FakeDriver

RING = 0x10000


@pytest.fixture
def memory():
    return GuestMemory(bytearray(1 << 20))


def test_chain_walk_and_used_ring(memory):
    d = FakeDriver(memory, RING)
    head, (w,) = d.offer([b"hello", b" world"], [8])
    chain = d.vring.pop()
    assert chain.head == head and chain.read_all() == b"hello world"
    assert [len(b) for b in chain.writable] == [8]
    chain.writable[0][:3] = b"abc"
    d.vring.push(chain.head, 3)
    assert d.used() == [(head, 3)] and memory.read(w, 3) == b"abc"
    assert d.vring.pop() is None
    assert d.vring.should_interrupt() and not d.vring.should_interrupt()


def test_no_interrupt_flag_is_honoured(memory):
    d = FakeDriver(memory, RING)
    memory.set_u16(d.vring.avail, 1)
    d.offer([b"x"], [])
    d.vring.push(d.vring.pop().head, 0)
    assert not d.vring.should_interrupt()


def test_looping_chain_kills(memory):
    d = FakeDriver(memory, RING)
    d.desc(0, 0x80000, 4, VRING_DESC_F_NEXT, 1)
    d.desc(1, 0x80000, 4, VRING_DESC_F_NEXT, 0)
    d.publish(0)
    with pytest.raises(GuestFault, match="loops"):
        d.vring.pop()


@pytest.mark.parametrize("addr,length,flags,nxt,match", [
    (0xFFFFF000, 16, 0, 0, "outside guest memory"),
    (0x80000, 1 << 30, 0, 0, "outside guest memory"),
    (0x80000, 4, VRING_DESC_F_NEXT, 99, "index 99"),
    (0x80000, 17, VRING_DESC_F_INDIRECT, 0, "multiple of 16"),
])
def test_bad_descriptors_kill_with_a_reason(memory, addr, length, flags, nxt, match):
    d = FakeDriver(memory, RING)
    d.desc(0, addr, length, flags, nxt)
    d.publish(0)
    with pytest.raises(GuestFault, match=match):
        d.vring.pop()


def test_avail_index_running_ahead_kills(memory):
    d = FakeDriver(memory, RING)
    memory.set_u16(d.vring.avail + 2, 100)
    with pytest.raises(GuestFault, match="avail index"):
        d.vring.pop()


def test_indirect_table(memory):
    d = FakeDriver(memory, RING)
    table = 0x90000
    memory.write(0xA0000, b"indirect!")
    memory.write(table, struct.pack("<QIHH", 0xA0000, 9, 0, 0))
    d.desc(0, table, 16, VRING_DESC_F_INDIRECT, 0)
    d.publish(0)
    assert d.vring.pop().read_all() == b"indirect!"


def test_ring_outside_memory_and_bad_size(memory):
    with pytest.raises(GuestFault, match="does not fit"):
        Vring(memory, memory.size - 4096, 256, 4096, "q")
    with pytest.raises(GuestFault, match="power of two"):
        Vring(memory, 0, 100, 4096, "q")


def test_rng_fills_every_buffer(memory):
    d = FakeDriver(memory, RING)
    _, (a, b) = d.offer([], [64, 32])
    rng = Rng()
    rng.service(0, d.vring)
    assert d.used() == [(0, 96)]
    assert memory.read(a, 64) != bytes(64) and memory.read(b, 32) != bytes(32)


def blk_request(d, type_, sector, data=b"", read_len=0):
    readable = [struct.pack("<IIQ", type_, 0, sector)] + ([data] if data else [])
    writable = ([read_len] if read_len else []) + [1]
    return d.offer(readable, writable)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(8 * 512))
    return path


def test_block_write_flush_read_and_status(memory, disk):
    d = FakeDriver(memory, RING)
    blk = B.Block(str(disk))
    assert struct.unpack("<QII", blk.config()) == (8, 0, 254)
    blk_request(d, B.VIRTIO_BLK_T_OUT, 2, b"A" * 1024)
    blk_request(d, B.VIRTIO_BLK_T_FLUSH, 0)
    _, (buf, status) = blk_request(d, B.VIRTIO_BLK_T_IN, 2, read_len=512)
    blk.service(0, d.vring)
    assert [n for _, n in d.used()] == [1, 1, 513]
    assert memory.read(buf, 512) == b"A" * 512 and memory.u8(status) == B.VIRTIO_BLK_S_OK
    assert disk.read_bytes()[1024:2048] == b"A" * 1024


def test_block_requests_past_the_end_fail_without_growing_the_file(memory, disk):
    d = FakeDriver(memory, RING)
    blk = B.Block(str(disk))
    _, (st1,) = blk_request(d, B.VIRTIO_BLK_T_OUT, 7, b"B" * 1024)
    _, (_, st2) = blk_request(d, B.VIRTIO_BLK_T_IN, 8, read_len=512)
    _, (st3,) = blk_request(d, 99, 0)
    blk.service(0, d.vring)
    assert memory.u8(st1) == B.VIRTIO_BLK_S_IOERR and memory.u8(st2) == B.VIRTIO_BLK_S_IOERR
    assert memory.u8(st3) == B.VIRTIO_BLK_S_UNSUPP
    assert os.path.getsize(disk) == 8 * 512


def test_block_read_only_and_get_id(memory, disk):
    d = FakeDriver(memory, RING)
    blk = B.Block(str(disk), readonly=True)
    assert blk.features() & (1 << B.VIRTIO_BLK_F_RO)
    _, (st,) = blk_request(d, B.VIRTIO_BLK_T_OUT, 0, b"C" * 512)
    _, (ident, st2) = blk_request(d, B.VIRTIO_BLK_T_GET_ID, 0, read_len=20)
    blk.service(0, d.vring)
    assert memory.u8(st) == B.VIRTIO_BLK_S_IOERR
    assert memory.read(ident, 8) == b"disk.img" and memory.u8(st2) == 0
    assert disk.read_bytes() == bytes(8 * 512)


def test_block_request_without_header_or_status_kills(memory, disk):
    d = FakeDriver(memory, RING)
    d.offer([b"short"], [1])
    with pytest.raises(GuestFault, match="header"):
        B.Block(str(disk)).service(0, d.vring)


@pytest.mark.parametrize("setup,match", [
    (lambda p: p.mkdir(), "directory"),
    (lambda p: p.write_bytes(b"x" * 100), "smaller than one"),
    (lambda p: None, "No such file"),
])
def test_bad_block_files_are_user_errors(tmp_path, setup, match):
    path = tmp_path / "d"
    setup(path)
    with pytest.raises(UserError, match=match):
        B.Block(str(path))


def test_console_output_and_input(memory):
    out = io.BytesIO()
    r, w = os.pipe()
    stops = []
    con = Console(out, r, on_interrupt=lambda: stops.append(1))
    inq, outq = FakeDriver(memory, RING), FakeDriver(memory, RING + 0x4000, data=0xC0000)
    con.start([inq.vring, outq.vring])
    outq.offer([b"hi there\n"], [])
    con.service(1, outq.vring)
    assert out.getvalue() == b"hi there\n"
    os.write(w, b"ls\n")
    assert con.on_fd(r) is None                  # no buffer offered yet: pause stdin
    _, (buf,) = inq.offer([], [64])
    con.service(0, inq.vring)                    # the kick reads the waiting input
    assert inq.used() == [(0, 3)] and memory.read(buf, 3) == b"ls\n"
    for _ in range(3):
        inq.offer([], [64])
        os.write(w, b"\x03")
        assert con.on_fd(r) is True
    assert stops == [1]
    os.close(w)
    inq.offer([], [64])
    assert con.on_fd(r) is False                 # end of input
    os.close(r)


def net_pair():
    import socket
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_net_transmits_whole_chains_and_receives_one_frame_per_buffer(memory):
    from launcher.hostnet.tap import TapBackend
    from launcher.virtio.net import Net
    host_end, tap_end = net_pair()
    tap_end.setblocking(False)
    net = Net(TapBackend(fd=tap_end.fileno()))
    rx, tx = FakeDriver(memory, RING), FakeDriver(memory, RING + 0x4000, data=0xC0000)
    net.start([rx.vring, tx.vring])
    hdr = bytes(10)
    tx.offer([hdr, b"frame-out"], [])
    net.service(1, tx.vring)
    assert host_end.recv(100) == hdr + b"frame-out" and tx.used() == [(0, 0)]
    assert net.on_fd(tap_end.fileno()) is None          # no receive buffer yet
    _, (buf,) = rx.offer([], [1526])
    host_end.send(hdr + b"frame-in")
    assert net.on_fd(tap_end.fileno()) is None          # took it; no buffer left now
    assert rx.used() == [(0, 18)] and memory.read(buf + 10, 8) == b"frame-in"
    rx.offer([], [1526])
    assert net.on_fd(tap_end.fileno()) is True          # a buffer, but no frame: keep polling
    assert rx.used() == []
    host_end.close()
    tap_end.close()


@pytest.mark.parametrize("spec,expect", [
    ("10.0.0.1", ("10.0.0.1", None, None)),
    ("10.0.0.1:52:54:00:12:34:56", ("10.0.0.1", None, bytes.fromhex("525400123456"))),
    ("bridge:br0", (None, "br0", None)),
    ("bridge:br0:52:54:00:12:34:56", (None, "br0", bytes.fromhex("525400123456"))),
])
def test_tunnet_specs(spec, expect):
    from launcher.hostnet.tap import parse_tunnet
    assert parse_tunnet(spec) == expect


@pytest.mark.parametrize("spec", ["10.0.0", "10.0.0.300", "10.0.0.1:zz:54:00:12:34:56",
                                  "bridge:", "10.0.0.1:52:54"])
def test_bad_tunnet_specs(spec):
    from launcher.hostnet.tap import parse_tunnet
    with pytest.raises(UserError):
        parse_tunnet(spec)


def test_net_header_follows_the_driver(tmp_path):
    """A G3 driver that accepts VERSION_1 puts a 12-byte header in front of
    each frame: the tap must be told, or every frame is off by two bytes."""
    import fcntl
    from launcher.hostnet.tap import TapBackend, open_tap
    from launcher.virtio.net import Net
    try:
        fd, _name = open_tap()
    except UserError as exc:
        pytest.skip(str(exc))
    backend = TapBackend(fd=fd)
    backend.name = "tap"                    # a real tap: failures must surface
    net = Net(backend)
    TUNGETVNETHDRSZ = 0x800454D7
    try:
        for accepted, size in ((0, 10), (1 << 32, 12)):
            net.accepted = accepted
            net.start([])
            got = fcntl.ioctl(fd, TUNGETVNETHDRSZ, struct.pack("i", 0))
            assert struct.unpack("i", got)[0] == size
    finally:
        net.close()


@pytest.mark.parametrize("accepted,syncs", [(0, 1), (1 << B.VIRTIO_BLK_F_FLUSH, 0)])
def test_a_driver_without_flush_gets_every_write_synced(memory, disk, monkeypatch,
                                                         accepted, syncs):
    """Linux before 2.6.32 knows no FLUSH: an acknowledged write must then
    be on the disk already; a driver that flushes decides for itself."""
    synced = []
    monkeypatch.setattr(B.os, "fdatasync", synced.append)
    d = FakeDriver(memory, RING)
    blk = B.Block(str(disk))
    blk.accepted = accepted
    blk_request(d, B.VIRTIO_BLK_T_OUT, 2, b"A" * 512)
    blk.service(0, d.vring)
    assert len(synced) == syncs


def test_the_tap_offloads_follow_what_the_driver_accepted():
    """A driver that did not accept GUEST_CSUM (Linux before 2.6.26, or any
    that declines) must never get a frame without a checksum."""
    from launcher.hostnet import tap as T
    bit = lambda *b: sum(1 << x for x in b)          # noqa: E731
    assert T.tun_offloads(0) == 0
    assert T.tun_offloads(bit(T.VIRTIO_NET_F_GUEST_TSO4)) == 0     # TSO needs the checksum
    assert T.tun_offloads(bit(T.VIRTIO_NET_F_GUEST_CSUM)) == T.TUN_F_CSUM
    everything = bit(T.VIRTIO_NET_F_GUEST_CSUM, T.VIRTIO_NET_F_GUEST_TSO4,
                     T.VIRTIO_NET_F_GUEST_TSO6, T.VIRTIO_NET_F_GUEST_ECN)
    assert T.tun_offloads(everything) == (T.TUN_F_CSUM | T.TUN_F_TSO4 | T.TUN_F_TSO6
                                          | T.TUN_F_TSO_ECN)


def test_linux_2_6_24_net_header_is_two_bytes_shorter():
    """Its virtio_net_hdr has no hdr_len: the device widens what the guest
    sends to the 10 bytes back ends speak, and narrows what it receives."""
    from launcher.virtio.net import Net, widen_header

    frame = memoryview(bytes([1, 2, 3, 4, 5, 6, 7, 8]) + b"payload")
    out = b"".join(bytes(b) for b in widen_header([frame[:3], frame[3:]]))
    assert out == bytes([1, 2, 0, 0, 3, 4, 5, 6, 7, 8]) + b"payload"
    assert widen_header([frame[:5]]) is None

    class OneFrame:
        def receive_into(self, bufs):
            return scatter(bytes([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]) + b"in", bufs)
    net = Net(OneFrame())
    got = bytearray(32)
    assert net.receive_short([memoryview(got)]) == 10
    assert bytes(got[:10]) == bytes([9, 8, 5, 4, 3, 2, 1, 0]) + b"in"


def test_linux_2_6_24_block_header_carries_an_id(memory, disk):
    """Its request header is 24 bytes (type, ioprio, sector, id): the data
    starts after the id, not in it."""
    d = FakeDriver(memory, RING)
    blk = B.Block(str(disk))
    blk.first_virtio = True
    d.offer([struct.pack("<IIQQ", B.VIRTIO_BLK_T_OUT, 0, 2, 0x1234), b"D" * 512], [1])
    blk.service(0, d.vring)
    assert disk.read_bytes()[1024:1536] == b"D" * 512


@pytest.mark.parametrize("typed", [[b"\x03", b"\x03", b"\x03"], [b"\x03\x03\x03"],
                                   [b"\x03x\x03", b"\x03"]])
def test_three_ctrl_c_stop_the_guest_however_the_reads_fall(memory, typed):
    """Three ^C within a second stop the guest, whether each arrives in a
    read of its own or they wait in the terminal for the guest's next
    buffer and come in one; anything else typed between starts over."""
    from launcher.virtio.console import Console
    r, w = os.pipe()
    stops = []
    con = Console(io.BytesIO(), r, lambda: stops.append(1))
    d = FakeDriver(memory, RING)
    con.queues = [d.vring]
    try:
        for chunk in typed:
            os.write(w, chunk)
            d.offer([], [64])
            con.read_input()
    finally:
        os.close(r)
        os.close(w)
    assert stops == ([] if b"x" in b"".join(typed) else [1])
