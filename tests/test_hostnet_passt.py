"""--net user (launcher/hostnet/passt.py): the option, the wire format, the
virtio-net device on it, and a real passt answering DHCP. No KVM needed;
tests/test_linux_kvm.py boots a real guest on it."""
from __future__ import annotations

import os
import shutil
import socket
import struct

import pytest

from launcher.errors import UserError
from launcher.memory import GuestMemory
from launcher.hostnet.passt import (GUEST_IP, LENGTH, FrameStream, Passt, PasstBackend,
                                    PortForward, UserNet, default_mac, parse_user_net,
                                    passt_argv)
from launcher.virtio.net import Net
from virtio_driver import FakeDriver

RING = 0x10000


@pytest.fixture
def memory():
    return GuestMemory(bytearray(1 << 20))


def test_user_net_options():
    assert parse_user_net("user") == UserNet()
    net = parse_user_net("user,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53,"
                         "mac=52:54:00:aa:bb:cc")
    assert net.forwards == [PortForward("tcp", "", 2222, 22),
                            PortForward("udp", "127.0.0.1", 5353, 53)]
    assert net.mac == bytes.fromhex("525400aabbcc")
    assert default_mac(0) == bytes.fromhex("525400123456")
    assert default_mac(1) == bytes.fromhex("525400123457")


@pytest.mark.parametrize("spec,words", [
    ("tap", "only `user`"),
    ("user,hostfwd=tcp::2222", "is not tcp|udp"),
    ("user,hostfwd=sctp::1-:2", "is not tcp|udp"),
    ("user,hostfwd=tcp::2222-10.0.2.99:22", "cannot forward to 10.0.2.99"),
    ("user,hostfwd=tcp::70000-:22", "out of range"),
    ("user,hostfwd=tcp::0-:22", "out of range"),
    ("user,mac=52:54", "not a MAC address"),
    ("user,restrict=on", "unknown option"),
])
def test_bad_user_net_options_are_one_sentence(spec, words):
    with pytest.raises(UserError, match=words):
        parse_user_net(spec)


def test_passt_command_line():
    argv = passt_argv(parse_user_net("user,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:53-:53"),
                      7, "/run/p/pid", "/run/p/log")
    assert argv[:5] == ["passt", "--foreground", "--quiet", "--fd", "7"]
    assert argv[argv.index("--address") + 1] == GUEST_IP
    assert argv[argv.index("--gateway") + 1] == "10.0.2.2"
    assert argv[-4:] == ["-t", "2222:22", "-u", "127.0.0.1/53:53"]


def test_frames_cross_a_stream_behind_their_length():
    a, b = socket.socketpair()
    ours = FrameStream(a)
    assert ours.read_frames() == []                      # nothing yet, no error
    assert ours.write_frame(b"one") and ours.write_frame(b"")
    assert b.recv(100) == LENGTH.pack(3) + b"one" + LENGTH.pack(0)
    # A frame split across reads waits for its rest.
    b.sendall(LENGTH.pack(5) + b"ab")
    assert ours.read_frames() == []
    b.sendall(b"cde" + LENGTH.pack(1) + b"x")
    assert ours.read_frames() == [b"abcde", b"x"]
    b.sendall(LENGTH.pack(1 << 20))                      # no frame is that long
    with pytest.raises(ConnectionError, match="out of step"):
        ours.read_frames()
    b.close()
    assert ours.read_frames() is None                    # end of file
    a.close()


def backend_on(sock: socket.socket) -> PasstBackend:
    """A PasstBackend on a socket of the test's, no passt process."""
    backend = PasstBackend(UserNet())
    backend.stream = FrameStream(sock)
    backend.fd = sock.fileno()
    return backend


def test_the_device_strips_and_adds_the_virtio_header(memory):
    peer, ours = socket.socketpair()
    net = Net(backend_on(ours), 0, default_mac(0))
    assert not net.features() & 1                        # no checksum offload over passt
    rx, tx = FakeDriver(memory, RING), FakeDriver(memory, RING + 0x4000, data=0xC0000)
    net.start([rx.vring, tx.vring])
    tx.offer([bytes(10), b"frame-out"], [])
    net.service(1, tx.vring)
    assert peer.recv(100) == LENGTH.pack(9) + b"frame-out" and tx.used() == [(0, 0)]

    peer.sendall(LENGTH.pack(8) + b"frame-in" + LENGTH.pack(7) + b"another")
    assert net.on_fd(ours.fileno()) is None              # no buffer: nothing read
    _, (buf,) = rx.offer([], [1526])
    assert net.on_fd(ours.fileno()) is None              # one frame in; no buffer left
    assert rx.used() == [(0, 18)]
    assert memory.read(buf, 10) == bytes(10) and memory.read(buf + 10, 8) == b"frame-in"
    # The second frame came in the same read: the socket has nothing more to
    # say, so the guest's next kick must deliver it.
    assert net.backend.buffered()
    _, (buf,) = rx.offer([], [1526])
    net.service(0, rx.vring)
    assert rx.used() == [(1, 17)] and memory.read(buf + 10, 7) == b"another"
    rx.offer([], [1526])
    assert net.on_fd(ours.fileno()) is True              # a buffer, no frame: keep polling

    # A frame larger than the guest's buffer is dropped, not cut.
    peer.sendall(LENGTH.pack(3000) + bytes(3000) + LENGTH.pack(2) + b"ok")
    assert net.on_fd(ours.fileno()) is None
    assert [n for _, n in rx.used()] == [12] and net.backend.dropped == 1
    peer.close()
    ours.close()


def test_twelve_byte_header_of_a_version_1_driver(memory):
    peer, ours = socket.socketpair()
    net = Net(backend_on(ours))
    net.accepted = 1 << 32
    rx, tx = FakeDriver(memory, RING), FakeDriver(memory, RING + 0x4000, data=0xC0000)
    net.start([rx.vring, tx.vring])
    tx.offer([bytes(12) + b"v1"], [])
    net.service(1, tx.vring)
    assert peer.recv(100) == LENGTH.pack(2) + b"v1"
    _, (buf,) = rx.offer([], [1526])
    peer.sendall(LENGTH.pack(2) + b"in")
    net.on_fd(ours.fileno())
    assert memory.read(buf, 14) == bytes(10) + b"\x01\x00" + b"in"   # num_buffers = 1
    peer.close()
    ours.close()


def test_passt_gone_drops_frames_and_says_so_once(memory, capsys):
    peer, ours = socket.socketpair()
    net = Net(backend_on(ours))
    rx, tx = FakeDriver(memory, RING), FakeDriver(memory, RING + 0x4000, data=0xC0000)
    net.start([rx.vring, tx.vring])
    peer.close()
    rx.offer([], [1526])
    assert net.on_fd(ours.fileno()) is False
    for i in range(3):
        tx.offer([bytes(10), b"frame %d" % i], [])
    net.service(1, tx.vring)
    assert [n for _, n in tx.used()] == [0, 0, 0]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "net0: the connection to passt failed" in err
    ours.close()


# ---- a real passt -------------------------------------------------------------------
def dhcp_discover(mac: bytes) -> bytes:
    """An Ethernet frame holding a DHCPDISCOVER from mac."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234abcd, 0, 0x8000,
                        bytes(4), bytes(4), bytes(4), bytes(4), mac, b"", b"")
    bootp += bytes([99, 130, 83, 99, 53, 1, 1, 255])       # magic cookie, DISCOVER, end
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes(4), b"\xff" * 4)
    total = sum(struct.unpack("!10H", ip))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    ip = ip[:10] + struct.pack("!H", ~total & 0xFFFF) + ip[12:]
    return b"\xff" * 6 + mac + b"\x08\x00" + ip + udp


@pytest.mark.skipif(shutil.which("passt") is None and not os.environ.get("CI"),
                    reason="passt is not installed (scripts/install-deps installs it)")
def test_a_real_passt_offers_the_guest_its_address_and_stops_with_us():
    mac = default_mac(0)
    passt = Passt(parse_user_net("user"))
    try:
        stream = FrameStream(passt.sock)
        assert stream.write_frame(dhcp_discover(mac))
        offer = None
        import select
        for _ in range(50):
            select.select([passt.sock], [], [], 0.2)
            for frame in stream.read_frames() or []:
                # IPv4 / UDP from port 67 to 68, to our MAC
                if frame[:6] == mac and frame[12:14] == b"\x08\x00" and frame[23] == 17 \
                        and frame[34:38] == b"\x00\x43\x00\x44":
                    offer = frame
            if offer:
                break
        assert offer is not None, "passt never answered the DHCPDISCOVER"
        yiaddr = offer[14 + 20 + 8 + 16:14 + 20 + 8 + 20]
        assert socket.inet_ntoa(yiaddr) == GUEST_IP
    finally:
        passt.stop()
    assert passt.proc.returncode is not None


@pytest.mark.skipif(shutil.which("passt") is None and not os.environ.get("CI"),
                    reason="passt is not installed (scripts/install-deps installs it)")
def test_passt_that_cannot_start_is_one_sentence_in_its_own_words(monkeypatch):
    monkeypatch.setenv("LGUEST_PASST_OPTIONS", "--no-such-passt-option")
    with pytest.raises(UserError, match=r"^--net user: passt did not start: passt: "
                                        r"unrecognized option '--no-such-passt-option'$"):
        Passt(parse_user_net("user"))
