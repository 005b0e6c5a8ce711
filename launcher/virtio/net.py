"""virtio-net (type 1): the guest's network card (docs/abi.md §9.6).

The device owns the two virtqueues (0 receive, 1 transmit) and the
virtio-net header in front of every frame (10 bytes on the lguest bus; 12
once a G3 driver accepts VERSION_1; 8 for Linux 2.6.24, widened to 10 for
the back ends). Where the frames go on the host is
its back end's business (launcher/hostnet/): a tap for ``--tunnet``, passt
for ``--net user``. The features offered are the basic ones plus whatever
offloads the back end can honour: a tap takes checksum and segmentation
offloads as they are, passt's wire has no room for them.
"""
from __future__ import annotations

import struct
import sys

from ..hostnet import NetBackend
from .device import Device
from .vring import Vring, scatter, split

VIRTIO_ID_NET = 1
VIRTIO_NET_F_MAC = 5
VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_F_ANY_LAYOUT = 28, 27
VIRTIO_NET_S_LINK_UP = 1
VIRTIO_F_VERSION_1 = 32
LEGACY_HDR_LEN, V1_HDR_LEN = 10, 12     # virtio_net_hdr; + num_buffers with VERSION_1
FIRST_HDR_LEN = 8       # Linux 2.6.24's header: no hdr_len field (bytes 2-3 of the later one)


class Net(Device):
    type = VIRTIO_ID_NET
    num_queues = 2                         # 0 receive, 1 transmit

    def __init__(self, backend: NetBackend, index: int = 0, mac: bytes | None = None,
                 mac_given: bool = False) -> None:
        self.name = f"net{index}"
        self.backend = backend
        self.mac = mac
        self.mac_given = mac_given      # the user asked for it (a G0 guest cannot take one)
        self.gone = False

    def attach(self) -> None:
        self.backend.attach()

    def features(self) -> int:
        f = (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_F_ANY_LAYOUT) | self.backend.offloads
        return f | (1 << VIRTIO_NET_F_MAC) if self.mac else f

    def config(self) -> bytes:
        return (self.mac or bytes(6)) + struct.pack("<HH", VIRTIO_NET_S_LINK_UP, 1)

    def start(self, queues: list[Vring]) -> None:
        super().start(queues)
        v1 = self.accepted >> VIRTIO_F_VERSION_1 & 1
        self.backend.set_header_len(V1_HDR_LEN if v1 else LEGACY_HDR_LEN)
        self.backend.accept(self.accepted)

    def extra_fds(self) -> list[int]:
        return [self.backend.fd]

    def service(self, index: int, vq: Vring) -> None:
        if index == 1:
            while (chain := vq.pop()) is not None:
                bufs = chain.readable
                if self.first_virtio:
                    bufs = widen_header(bufs)
                if not self.gone and bufs is not None:
                    try:
                        self.backend.send(bufs)
                    except OSError as exc:
                        self.host_side_gone(exc)    # and drop the frame, as a wire would
                vq.push(chain.head, 0)
        elif self.backend.buffered():
            self.receive()          # frames read ahead, waiting for these buffers
        # otherwise receive buffers are filled when the host side has frames (on_fd)

    def on_fd(self, fd: int) -> bool | None:
        return self.receive()

    def receive(self) -> bool | None:
        """Fill the guest's receive buffers while frames come. True: keep
        polling the host side; None: pause it until the guest posts buffers;
        False: it is gone for good."""
        vq = self.queues[0]
        while True:
            if self.gone:
                return False
            if not vq.pending():
                return None             # no buffer: wait for the guest to post some
            chain = vq.peek()
            try:
                frame_len = (self.receive_short(chain.writable) if self.first_virtio
                             else self.backend.receive_into(chain.writable))
            except BlockingIOError:
                return True             # the buffer stays offered for the next frame
            except OSError as exc:
                self.host_side_gone(exc)    # stop receiving; the buffer stays the guest's
                return False
            if frame_len == 0:          # end of file: nothing will ever come
                self.host_side_gone(None)
                return False
            vq.advance()
            vq.push(chain.head, frame_len)

    def receive_short(self, bufs: list[memoryview]) -> int:
        """A frame for Linux 2.6.24's driver: the back end's 10-byte header
        without its hdr_len. 0 at end of file, as receive_into."""
        room = bytearray(sum(len(b) for b in bufs) + LEGACY_HDR_LEN - FIRST_HDR_LEN)
        n = self.backend.receive_into([memoryview(room)])
        return scatter(room[:2] + room[4:n], bufs) if n else 0

    def host_side_gone(self, exc: OSError | None) -> None:
        """Say once that the host side is gone (someone deleted the tap
        device, or passt died); the guest carries on, its frames dropped as a
        cable pulled out would drop them."""
        if not self.gone:
            self.gone = True
            why = f" ({exc.strerror or exc})" if exc is not None else ""
            print(f"launcher: {self.name}: the {self.backend.label()} failed{why}: "
                  "the guest's frames are dropped", file=sys.stderr, flush=True)

    def describe(self) -> str:
        mac = ":".join(f"{b:02x}" for b in self.mac) if self.mac else "guest's choice"
        return f"{self.name}: virtio-net on {self.backend.describe()}, MAC {mac}"

    def close(self) -> None:
        self.backend.close()


def widen_header(bufs: list[memoryview]) -> list[memoryview] | None:
    """A frame from Linux 2.6.24's driver with the 10-byte header every
    back end speaks (hdr_len 0); None if it is shorter than a header."""
    header, rest = split(bufs, FIRST_HDR_LEN)
    if header is None:
        return None
    return [memoryview(header[:2] + bytes(2) + header[2:]), *rest]
