"""What a virtio device is, and the thread that services its queues.

A ``Device`` knows its virtio type, the features it offers, its config
space and how to service each queue; it knows nothing of the transport. A
``DeviceRunner`` gives a started device one thread that sleeps in ``poll``
on one eventfd per queue (the notify map writes them when the guest kicks),
a stop eventfd, and any file descriptor the device itself waits on (stdin,
a tap). It follows the ring etiquette of docs/abi.md §9.5: no notifies
while busy, re-check before sleeping, interrupt only for new used entries
unless the guest suppressed them.

A device thread never takes the launcher down: a guest that breaks the
rules is killed with the reason (``on_fault``), and so is a device whose
host side fails unexpectedly.
"""
from __future__ import annotations

import os
import select
import threading
from typing import Callable

from ..errors import GuestFault
from .vring import Vring


class Device:
    """Override ``service`` (and ``on_fd`` for an extra descriptor)."""

    type: int = 0
    name: str = "device"
    num_queues: int = 1
    accepted: int = 0          # the features the driver accepted (set at start)
    first_virtio = False       # its driver is Linux 2.6.24's (lguest_bus.py)

    def features(self) -> int:
        return 0

    def config(self) -> bytes:
        return b""

    def modern_features(self) -> int:
        """Features offered over virtio-PCI (G3); the transport adds VERSION_1."""
        return self.features()

    def modern_config(self) -> bytes:
        """Device config over virtio-PCI, where it may differ from the lguest bus's."""
        return self.config()

    def emergency_write_offset(self) -> int | None:
        """Where in the device config a write goes straight out (the
        console's emerg_wr), or None."""
        return None

    def emergency_write(self, data: bytes) -> None:
        """Bytes written there (one per write; the Switcher may gather a
        line of them first)."""

    def extra_fds(self) -> list[int]:
        return []

    def attach(self) -> None:
        """Acquire what the device needs on the host only where the guest
        runs (a tap, passt); files to check early are opened in __init__."""

    def describe(self) -> str:
        """One line for --verbose."""
        return self.name

    def start(self, queues: list[Vring]) -> None:
        self.queues = queues

    def service(self, index: int, vq: Vring) -> None:
        raise NotImplementedError

    def on_fd(self, fd: int) -> bool | None:
        """An extra descriptor is readable. Return True to keep polling it,
        None to pause it until the guest next kicks a queue, False to drop it."""
        return True

    def stop(self) -> None:
        """The guest's driver is gone (reset or end of a boot)."""

    def close(self) -> None:
        """The launcher is done with the device: release host resources."""


class DeviceRunner:
    def __init__(self, device: Device, queues: list[Vring], irqs: list[int],
                 raise_irq: Callable[[int], None], on_fault: Callable[[str], None]) -> None:
        self.device, self.queues, self.irqs = device, queues, irqs
        self.raise_irq, self.on_fault = raise_irq, on_fault
        self.kick_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in queues]
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.thread = threading.Thread(target=self._loop, name=f"virtio-{device.name}",
                                       daemon=True)

    def start(self) -> None:
        self.device.start(self.queues)
        self.thread.start()

    def kick(self, index: int) -> None:
        os.eventfd_write(self.kick_fds[index], 1)

    def stop(self) -> None:
        os.eventfd_write(self.stop_fd, 1)
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(5)
        self.device.stop()
        for fd in (*self.kick_fds, self.stop_fd):
            os.close(fd)
        self.kick_fds = []

    def service(self, index: int) -> None:
        vq = self.queues[index]
        vq.set_no_notify(True)
        while True:
            seen = vq.avail_idx()
            self.device.service(index, vq)
            self.interrupt(index)
            vq.set_no_notify(False)
            # Buffers the guest added while notifies were off get no kick:
            # look again. (Buffers a device leaves waiting on purpose, like
            # console input, do not count: only a moved avail index does.)
            if vq.avail_idx() == seen:
                return
            vq.set_no_notify(True)

    def interrupt(self, index: int) -> None:
        if self.queues[index].should_interrupt():
            self.raise_irq(self.irqs[index])

    def _loop(self) -> None:
        poller = select.poll()
        which: dict[int, int] = {}
        for i, fd in enumerate(self.kick_fds):
            poller.register(fd, select.POLLIN)
            which[fd] = i
        poller.register(self.stop_fd, select.POLLIN)
        extra = set(self.device.extra_fds())
        for fd in extra:
            poller.register(fd, select.POLLIN)
        try:
            for i in range(len(self.queues)):
                self.service(i)           # buffers offered before we started
            paused: set[int] = set()
            while True:
                for fd, _events in poller.poll():
                    if fd == self.stop_fd:
                        return
                    if fd in which:
                        os.eventfd_read(fd)
                        self.service(which[fd])
                        for p in paused:          # the guest offered buffers
                            poller.register(p, select.POLLIN)
                        paused.clear()
                    elif fd in extra:
                        keep = self.device.on_fd(fd)
                        for i in range(len(self.queues)):
                            self.interrupt(i)
                        if keep is not True:
                            poller.unregister(fd)
                            if keep is None:
                                paused.add(fd)
                            else:
                                extra.discard(fd)
        except GuestFault as fault:
            self.on_fault(str(fault))
        except Exception as exc:          # a host-side failure: end the guest, say why
            self.on_fault(f"the {self.device.name} device failed: {exc!r}")
