"""``--net user``: user-mode networking through passt(1), no root needed.

passt is a small unprivileged program that gives a virtual machine a
network of its own made of the host's ordinary sockets: the guest's TCP and
UDP flows leave as the launcher's user's connections, and passt answers the
guest's DHCP, ARP and neighbour discovery itself. We start it with one end
of a socket pair (``--fd``) and speak its wire protocol on the other: a
stream of Ethernet frames, each behind its length as a 32-bit big-endian
number (QEMU's ``-netdev stream`` format). passt quits when that socket
closes, so it never outlives the launcher.

The addresses follow QEMU's ``-nic user``, which most users know:

    guest          10.0.2.15/24, by DHCP
    gateway        10.0.2.2: a TCP connection to it reaches the host's own
                   loopback (a server on the host at 127.0.0.1:8000 is
                   http://10.0.2.2:8000 from the guest)
    DNS            the host's resolvers, offered by DHCP

and ``hostfwd=tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`` (or ``udp:``)
forwards a port of the host into the guest. Frames carry no virtio header
on this wire: the device's header is stripped on the way out and a plain
one (no offloads) put in front on the way in, so the device offers no
checksum or segmentation offload with this back end.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

from ..errors import UserError
from ..virtio.vring import scatter
from . import NetBackend
from .tap import parse_mac

GUEST_IP, GATEWAY_IP, PREFIX = "10.0.2.15", "10.0.2.2", 24
QEMU_MAC = bytes.fromhex("525400123456")   # QEMU's first NIC; the next ones count up
MTU = 1500                   # told to the guest by DHCP; receive buffers are sized for it
MAX_FRAME = 65535 + 14       # the largest frame the length prefix may announce
MAX_QUEUED = 256             # frames read ahead while the guest posts no buffer
START_TIMEOUT_S = float(os.environ.get("LGUEST_PASST_START_TIMEOUT", "30"))
LENGTH = struct.Struct("!I")

_HOSTFWD = re.compile(r"^(tcp|udp):([0-9.]*):(\d+)-([0-9.]*):(\d+)$")


@dataclass
class PortForward:
    proto: str               # "tcp" or "udp"
    host_addr: str           # "" for every address
    host_port: int
    guest_port: int

    def passt_args(self) -> list[str]:
        where = f"{self.host_addr}/" if self.host_addr else ""
        return ["-t" if self.proto == "tcp" else "-u",
                f"{where}{self.host_port}:{self.guest_port}"]


@dataclass
class UserNet:
    """What ``--net user[,hostfwd=...][,mac=...]`` asked for."""
    forwards: list[PortForward] = field(default_factory=list)
    mac: bytes | None = None


def parse_user_net(spec: str) -> UserNet:
    """'user', 'user,hostfwd=tcp::2222-:22,mac=52:54:00:12:34:56' ..."""
    kind, *options = spec.split(",")
    if kind != "user":
        raise UserError(f"--net {spec}: only `user` networking is known here "
                        "(a tap is --tunnet)")
    net = UserNet()
    for opt in options:
        key, eq, value = opt.partition("=")
        if key == "hostfwd" and eq:
            net.forwards.append(parse_hostfwd(value, spec))
        elif key == "mac" and eq:
            net.mac = parse_mac(value, f"--net {spec}")
        else:
            raise UserError(f"--net {spec}: unknown option {opt!r} "
                            "(known: hostfwd=tcp::HOSTPORT-:GUESTPORT, mac=MAC)")
    return net


def default_mac(index: int) -> bytes:
    """The MAC of the index-th --net user card when none is given."""
    return QEMU_MAC[:5] + bytes([(QEMU_MAC[5] + index) & 0xFF])


def parse_hostfwd(value: str, spec: str) -> PortForward:
    m = _HOSTFWD.match(value)
    if not m:
        raise UserError(f"--net {spec}: hostfwd={value} is not "
                        "tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT")
    proto, host_addr, host_port, guest_addr, guest_port = m.groups()
    if guest_addr and guest_addr != GUEST_IP:
        raise UserError(f"--net {spec}: the guest is {GUEST_IP}; hostfwd cannot "
                        f"forward to {guest_addr}")
    for port in (host_port, guest_port):
        if not 0 < int(port) < 65536:
            raise UserError(f"--net {spec}: port {port} is out of range")
    return PortForward(proto, host_addr, int(host_port), int(guest_port))


def passt_argv(net: UserNet, fd: int, pid_file: str, log_file: str) -> list[str]:
    """The passt command line for one guest on socket ``fd``."""
    argv = ["passt", "--foreground", "--quiet", "--fd", str(fd), "--pid", pid_file,
            "--log-file", log_file, "--address", GUEST_IP, "--netmask", str(PREFIX),
            "--gateway", GATEWAY_IP, "--mtu", str(MTU)]
    for fwd in net.forwards:
        argv += fwd.passt_args()
    # For debugging the network: e.g. LGUEST_PASST_OPTIONS="--pcap /tmp/guest.pcap".
    return argv + shlex.split(os.environ.get("LGUEST_PASST_OPTIONS", ""))


class Passt:
    """One passt process, tied to one end of a socket pair."""

    def __init__(self, net: UserNet) -> None:
        if shutil.which("passt") is None:
            raise UserError("--net user needs passt (Debian and Ubuntu package `passt`; "
                            "scripts/install-deps installs it)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        self.dir = tempfile.mkdtemp(prefix="lguest-passt-")
        # passt changes to user nobody when started as root: it must be able
        # to write its log there afterwards.
        os.chmod(self.dir, 0o1777)
        pid_file, self.log = os.path.join(self.dir, "pid"), os.path.join(self.dir, "log")
        # Its stderr goes to a file too, never a pipe nobody drains.
        self.stderr = os.path.join(self.dir, "stderr")
        try:
            with open(self.stderr, "wb") as err:
                self.proc = subprocess.Popen(passt_argv(net, theirs.fileno(), pid_file, self.log),
                                             pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=err)
        except OSError as exc:
            self._cleanup(ours, theirs)
            raise UserError(f"--net user: cannot start passt: {exc.strerror}") from None
        theirs.close()
        # passt writes its pid file once it is set up (ports bound, socket
        # taken), or exits saying why.
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _nonempty(pid_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = self.last_words() or ("it exited" if self.proc.poll() is not None
                                            else f"no answer in {START_TIMEOUT_S:g} s")
                self.stop()
                raise UserError(f"--net user: passt did not start: {why}")
            time.sleep(0.02)

    def last_words(self) -> str:
        """passt's complaint: the first line it wrote to stderr (a usage
        error comes first, its usage text after), else its log's last."""
        def lines(path: str) -> list[str]:
            try:
                with open(path, errors="replace") as f:
                    return [line.strip() for line in f
                            if line.strip() and "syslog" not in line]
            except OSError:
                return []
        said, logged = lines(self.stderr), lines(self.log)
        return said[0] if said else logged[-1] if logged else ""

    def stop(self) -> None:
        """Close our end (passt quits on its own), then make sure it did."""
        self.sock.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                # (A launcher that gave up root after starting passt may not
                # signal it; passt quits on the closed socket all the same.)
                try:
                    self.proc.terminate()
                    self.proc.wait(2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                except PermissionError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def _cleanup(self, *socks: socket.socket) -> None:
        for s in socks:
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _nonempty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


class FrameStream:
    """Frames on a stream socket, each behind a 32-bit big-endian length.

    Reading is non-blocking and buffered: ``read_frames`` takes what the
    socket has and returns whole frames; a frame split across reads waits
    for its rest. A length no Ethernet frame has means the stream is out of
    step, which nothing can repair: it raises ConnectionError.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.inbuf = bytearray()

    def read_frames(self) -> list[bytes] | None:
        """Whole frames now readable ([] if none yet); None at end of file."""
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                return None
            self.inbuf += chunk
            if len(chunk) < 1 << 16:
                break
        frames, pos, buf = [], 0, self.inbuf
        while len(buf) - pos >= LENGTH.size:
            n, = LENGTH.unpack_from(buf, pos)
            if n > MAX_FRAME:
                raise ConnectionError(f"a frame of {n} bytes: the stream is out of step")
            if len(buf) - pos - LENGTH.size < n:
                break
            frames.append(bytes(buf[pos + LENGTH.size:pos + LENGTH.size + n]))
            pos += LENGTH.size + n
        del buf[:pos]
        return frames

    def write_frame(self, frame: bytes) -> bool:
        """Send one frame; False if the socket is full (the frame is dropped,
        as a wire would drop it). A frame once started is always finished:
        half a frame would put the stream out of step for good."""
        data = LENGTH.pack(len(frame)) + frame
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return False
        if sent < len(data):
            self.sock.settimeout(5)
            try:
                self.sock.sendall(data[sent:])
            finally:
                self.sock.setblocking(False)
        return True


# Inside the testbed, the outer launcher (on the user's host) runs passt and
# gives the testbed VM a network card joined to this bridge: a tap on it
# reaches the host's network, where a passt in the VM would see none.
TESTBED_BRIDGE_ENV = "LGUEST_TESTBED_NET"


def user_net_backend(net: UserNet) -> NetBackend:
    """passt here, or inside the testbed the outer launcher's passt."""
    bridge = os.environ.get(TESTBED_BRIDGE_ENV)
    if bridge and os.environ.get("LGUEST_IN_TESTBED"):
        from .tap import TapBackend
        return TapBackend(bridge=bridge)
    return PasstBackend(net)


class PasstBackend(NetBackend):
    """virtio-net over passt: the device's frames, without their header."""

    offloads = 0

    def __init__(self, net: UserNet) -> None:
        self.net = net
        self.name = "passt"
        self.passt: Passt | None = None
        self.stream: FrameStream | None = None
        self.pending: deque[bytes] = deque()
        self.dropped = 0

    def attach(self) -> None:
        if self.passt is None:
            self.passt = Passt(self.net)
            self.stream = FrameStream(self.passt.sock)
            self.fd = self.passt.sock.fileno()

    def send(self, bufs: list[memoryview]) -> None:
        frame = b"".join(bufs)[self.header_len:]
        if frame and not self.stream.write_frame(frame):
            self.dropped += 1

    def receive_into(self, bufs: list[memoryview]) -> int:
        while True:
            if not self.pending:
                frames = self.stream.read_frames()
                if frames is None:
                    return 0
                self.pending.extend(frames)
                # Read ahead only so far: beyond that the oldest go, as a
                # switch's full queue would drop them.
                while len(self.pending) > MAX_QUEUED:
                    self.pending.popleft()
                    self.dropped += 1
                if not self.pending:
                    raise BlockingIOError
            frame = self._header() + self.pending.popleft()
            if len(frame) <= sum(len(b) for b in bufs):
                return scatter(frame, bufs)
            self.dropped += 1           # larger than the guest's buffer: dropped, not cut

    def _header(self) -> bytes:
        # No flags, no GSO; with VERSION_1's 12 bytes, num_buffers = 1.
        return bytes(10) + (b"\x01\x00" if self.header_len == 12 else b"")

    def buffered(self) -> bool:
        return bool(self.pending)

    def label(self) -> str:
        return "connection to passt"

    def describe(self) -> str:
        fwd = ", ".join(f"{f.proto} {f.host_addr or '*'}:{f.host_port} -> guest:{f.guest_port}"
                        for f in self.net.forwards)
        return (f"passt (guest {GUEST_IP}/{PREFIX}, host at {GATEWAY_IP}"
                f"{'; ' + fwd if fwd else ''})")

    def close(self) -> None:
        if self.passt is not None:
            self.passt.stop()
            self.passt = None
            self.stream = None
            self.fd = -1

