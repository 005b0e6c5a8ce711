"""virtio-net (type 1) over a host tap device (lguest-abi.md §9.6).

The tap is opened with IFF_NO_PI | IFF_VNET_HDR, so every frame crossing it
carries the same virtio_net_hdr the guest puts in front of its frames (10
bytes on the lguest bus; 12 once a G3 driver accepts VERSION_1, and the
tap is told so): transmit is one writev of the guest's chain, receive one
readv into the guest's buffers, with no copying or parsing in Python.

``--tunnet IP[:MAC]`` gives the host side of the tap that address (a /24)
and brings it up; ``--tunnet bridge:BR[:MAC]`` adds it to bridge BR.
"""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys

from ..errors import UserError
from .device import Device
from .vring import Vring

VIRTIO_ID_NET = 1
VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC = 0, 1, 5
VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN = 7, 8, 9
VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN = 11, 12, 13
VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_F_ANY_LAYOUT = 28, 27
VIRTIO_NET_S_LINK_UP = 1

TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
VIRTIO_F_VERSION_1 = 32
LEGACY_HDR_LEN, V1_HDR_LEN = 10, 12     # virtio_net_hdr; + num_buffers with VERSION_1
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08


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
    mac = None
    if mac_text:
        octets = mac_text.split(":")
        try:
            mac = bytes(int(o, 16) for o in octets)
        except ValueError:
            mac = b""
        if len(mac) != 6:
            raise UserError(f"--tunnet {spec}: {mac_text!r} is not a MAC address")
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


class Net(Device):
    type = VIRTIO_ID_NET
    num_queues = 2                         # 0 receive, 1 transmit

    def __init__(self, spec: str | None = None, index: int = 0, tap_fd: int | None = None) -> None:
        self.name = f"net{index}"
        ip, bridge, self.mac = parse_tunnet(spec) if spec else (None, None, None)
        if tap_fd is None:
            tap_fd, self.ifname = open_tap()
            try:
                configure_tap(self.ifname, ip, bridge)
            except UserError:
                os.close(tap_fd)
                raise
        else:
            self.ifname = "test"
        self.tap = tap_fd
        self.gone = False

    def features(self) -> int:
        bits = (VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_RING_F_INDIRECT_DESC,
                VIRTIO_F_ANY_LAYOUT)
        f = sum(1 << b for b in bits)
        return f | (1 << VIRTIO_NET_F_MAC) if self.mac else f

    def config(self) -> bytes:
        return (self.mac or bytes(6)) + struct.pack("<HH", VIRTIO_NET_S_LINK_UP, 1)

    def start(self, queues: list[Vring]) -> None:
        super().start(queues)
        size = V1_HDR_LEN if self.accepted >> VIRTIO_F_VERSION_1 & 1 else LEGACY_HDR_LEN
        try:
            fcntl.ioctl(self.tap, TUNSETVNETHDRSZ, struct.pack("i", size))
        except OSError:
            if self.ifname != "test":        # a test's socket stands in for the tap
                raise

    def extra_fds(self) -> list[int]:
        return [self.tap]

    def service(self, index: int, vq: Vring) -> None:
        if index == 1:
            while (chain := vq.pop()) is not None:
                try:
                    os.writev(self.tap, chain.readable)
                except BlockingIOError:
                    pass                # a full tap drops the frame, as a wire would
                except OSError as exc:
                    self.tap_gone(exc)  # and so does one that went away
                vq.push(chain.head, 0)
        # receive buffers are filled when the tap has frames (on_fd)

    def on_fd(self, fd: int) -> bool | None:
        vq = self.queues[0]
        while True:
            if not vq.pending():
                return None             # no buffer: wait for the guest to post some
            chain = vq.peek()
            try:
                frame_len = os.readv(self.tap, chain.writable)
            except BlockingIOError:
                return True             # the buffer stays offered for the next frame
            except OSError as exc:
                self.tap_gone(exc)      # stop receiving; the buffer stays the guest's
                return False
            if frame_len == 0:          # end of file: nothing will ever come
                self.tap_gone(None)
                return False
            vq.advance()
            vq.push(chain.head, frame_len)

    def tap_gone(self, exc: OSError | None) -> None:
        """Say once that the host side is gone (someone deleted the tap
        device, say); the guest carries on, its frames dropped as a
        cable pulled out would drop them."""
        if not self.gone:
            self.gone = True
            why = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
            print(f"launcher: {self.name}: the tap device {self.ifname} failed{why}: "
                  "the guest's frames are dropped", file=sys.stderr, flush=True)

    def close(self) -> None:
        os.close(self.tap)
