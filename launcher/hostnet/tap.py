"""``--tunnet``: a host tap device behind the guest's network card.

The tap is opened with IFF_NO_PI | IFF_VNET_HDR, so every frame crossing it
carries the same virtio_net_hdr the guest puts in front of its frames (10
bytes on the lguest bus; 12 once a G3 driver accepts VERSION_1, and the
tap is told so): transmit is one writev of the guest's chain, receive one
readv into the guest's buffers, with no copying or parsing in Python. The
tap also takes checksum and segmentation offloads, so the device can offer
them to the guest.

``--tunnet IP[:MAC]`` gives the host side of the tap that address (a /24)
and brings it up; ``--tunnet bridge:BR[:MAC]`` adds it to bridge BR. Both
need root (CAP_NET_ADMIN).
"""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess

from ..errors import UserError
from . import NetBackend

TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08

# The virtio-net features a tap can honour (the bit numbers of virtio/net.py).
VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM = 0, 1
VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN = 7, 8, 9
VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN = 11, 12, 13
TAP_OFFLOADS = sum(1 << b for b in (
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN))


def tun_offloads(accepted: int) -> int:
    """TUNSETOFFLOAD flags for the guest-side features a driver accepted:
    the tap may then hand it frames without a checksum or larger than the
    MTU, and never otherwise (a driver that knows no GUEST_CSUM, Linux
    before 2.6.26 among them, would take such frames as they are). The
    kernel accepts segmentation offloads only with the checksum one."""
    if not accepted >> VIRTIO_NET_F_GUEST_CSUM & 1:
        return 0
    flags = TUN_F_CSUM
    if accepted >> VIRTIO_NET_F_GUEST_TSO4 & 1:
        flags |= TUN_F_TSO4
    if accepted >> VIRTIO_NET_F_GUEST_TSO6 & 1:
        flags |= TUN_F_TSO6
    if flags & (TUN_F_TSO4 | TUN_F_TSO6) and accepted >> VIRTIO_NET_F_GUEST_ECN & 1:
        flags |= TUN_F_TSO_ECN
    return flags


def parse_mac(text: str, what: str) -> bytes:
    """'52:54:00:12:34:56' -> six bytes, or a UserError naming ``what``."""
    try:
        mac = bytes(int(o, 16) for o in text.split(":"))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise UserError(f"{what}: {text!r} is not a MAC address")
    return mac


def parse_tunnet(spec: str) -> tuple[str | None, str | None, bytes | None]:
    """'IP[:MAC]' or 'bridge:BR[:MAC]' -> (ip, bridge, mac)."""
    bridge = ip = None
    if spec.startswith("bridge:"):
        bridge, _, mac_text = spec[len("bridge:"):].partition(":")
    else:
        ip, _, mac_text = spec.partition(":")
        parts = ip.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
            raise UserError(f"--tunnet {spec}: {ip!r} is not an IPv4 address")
    mac = parse_mac(mac_text, f"--tunnet {spec}") if mac_text else None
    if bridge is not None and not bridge:
        raise UserError(f"--tunnet {spec}: no bridge name")
    return ip, bridge, mac


def open_tap() -> tuple[int, str]:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise UserError(f"--tunnet: cannot open /dev/net/tun: {exc.strerror}") from None
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF,
                          struct.pack("16sH22x", b"tap%d", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
    except OSError as exc:
        os.close(fd)
        raise UserError(f"--tunnet: cannot create a tap device ({exc.strerror}); "
                        "it needs root or CAP_NET_ADMIN") from None
    return fd, ifr[:16].rstrip(b"\0").decode()


def configure_tap(name: str, ip: str | None, bridge: str | None) -> None:
    cmds = [["ip", "link", "set", name, "up"]]
    if ip:
        cmds.insert(0, ["ip", "addr", "add", f"{ip}/24", "dev", name])
    if bridge:
        cmds.append(["ip", "link", "set", name, "master", bridge])
    for cmd in cmds:
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise UserError("--tunnet needs the `ip` command (iproute2)") from None
        except subprocess.CalledProcessError as exc:
            raise UserError(f"--tunnet: `{' '.join(cmd)}` failed: "
                            f"{exc.stderr.strip() or exc.returncode}") from None


class TapBackend(NetBackend):
    """A tap device: made and configured at ``attach``, or an already open
    descriptor (``fd=``, the tests' socket standing in for a tap)."""

    offloads = TAP_OFFLOADS

    def __init__(self, ip: str | None = None, bridge: str | None = None, *,
                 fd: int | None = None) -> None:
        self.ip, self.bridge = ip, bridge
        self.fd = -1 if fd is None else fd
        self.name = "tap" if fd is None else "test"

    def attach(self) -> None:
        if self.fd >= 0:
            return
        fd, self.name = open_tap()
        try:
            configure_tap(self.name, self.ip, self.bridge)
        except UserError:
            os.close(fd)
            raise
        self.fd = fd

    def set_header_len(self, n: int) -> None:
        super().set_header_len(n)
        try:
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", n))
        except OSError:
            if self.name != "test":     # a test's socket stands in for the tap
                raise

    def accept(self, features: int) -> None:
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, tun_offloads(features))
        except OSError:
            if self.name != "test":     # a test's socket stands in for the tap
                raise

    def send(self, bufs: list[memoryview]) -> None:
        try:
            os.writev(self.fd, bufs)
        except BlockingIOError:
            pass                        # a full tap drops the frame, as a wire would

    def receive_into(self, bufs: list[memoryview]) -> int:
        return os.readv(self.fd, bufs)

    def label(self) -> str:
        return f"tap device {self.name}"

    def describe(self) -> str:
        where = (f"on bridge {self.bridge}" if self.bridge else
                 f"host side {self.ip}/24" if self.ip else "not configured")
        return f"{self.label()} ({where})"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
