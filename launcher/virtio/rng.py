"""virtio-rng (type 4): every buffer the guest offers, filled from the host's
/dev/urandom."""
from __future__ import annotations

import os

from .device import Device
from .vring import Vring

VIRTIO_ID_RNG = 4


class Rng(Device):
    type = VIRTIO_ID_RNG
    name = "rng"
    num_queues = 1

    def describe(self) -> str:
        return "rng: virtio entropy from the host's /dev/urandom"

    def service(self, index: int, vq: Vring) -> None:
        while (chain := vq.pop()) is not None:
            total = 0
            for buf in chain.writable:
                buf[:] = os.urandom(len(buf))
                total += len(buf)
            vq.push(chain.head, total)
