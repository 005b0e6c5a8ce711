"""The DMA bus: the descriptor page, the guest's bindings, BIND_DMA and
SEND_DMA, and the thread that feeds host input into bound buffers.

Every guest-supplied value is checked before use: a key must be an aligned
address inside guest memory, a DMA structure and each of its sections must
lie inside guest memory, a binding's array too. A guest that breaks this
is killed with the reason; one that binds more than the 32 buffers lguest
allowed, or names an IRQ past 31, gets 0 back (the call failed), as it did.

Locking: bindings change on the vCPU thread (BIND_DMA) and are filled on
the input thread. ``lock`` covers a whole fill, so once BIND_DMA has taken
a buffer back, nothing writes into it any more.
"""
from __future__ import annotations

import os
import select
import struct
import threading
from dataclasses import dataclass
from typing import Callable

from ..errors import GuestFault, UserError
from ..virtio.device import Device
from .devices import DmaPort, port_for

PAGE = 4096
LGUEST_MAX_DMA = 32              # bindings one guest may hold
LGUEST_MAX_DMA_SECTIONS = 16
LGUEST_MAX_DEVICES = 16          # descriptors in the page
LGUEST_IRQS = 32
DMA = struct.Struct("<I16I16H")  # struct lguest_dma {used_len; addr[16]; len[16]}
DESC = struct.Struct("<HHHHI")   # lguest_device_desc {type, features, status, num_pages; pfn}
RETRY_S = 0.01                   # input waiting for the guest to free a buffer: look again


def check_devices(devices: list[Device]) -> None:
    """Refuse, before anything boots, devices Linux 2.6.23 has no driver for."""
    for dev in devices:
        port_for(dev)
    if len(devices) > LGUEST_MAX_DEVICES:
        raise UserError(f"Linux 2.6.23 finds at most {LGUEST_MAX_DEVICES} devices")


def pages_needed(devices: list[Device]) -> int:
    """Guest pages above RAM: the descriptor page and each device's own."""
    return 1 + sum(port_for(d).pages for d in devices)


@dataclass
class Binding:
    key: int
    dmas: int                    # gpa of the first struct lguest_dma
    count: int
    irq: int


class DmaBus:
    def __init__(self, devices: list[Device]) -> None:
        check_devices(devices)
        self.ports: list[DmaPort] = [port_for(d) for d in devices]
        self.bindings: list[Binding] = []
        self.senders: dict[int, Callable[[list[memoryview]], int]] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def install(self, host, mem: int) -> None:
        """Write the descriptor page at ``mem`` and each device's pages after
        it, hook the DMA calls, and start feeding input."""
        self.host, self.memory = host, host.memory
        page = bytearray(PAGE)
        next_page = mem + PAGE
        for i, port in enumerate(self.ports):
            at = next_page if port.pages else 0
            DESC.pack_into(page, i * DESC.size, port.type, port.features, 0, port.pages,
                           at // PAGE)
            self.senders.update(port.install(self, at))
            next_page += port.pages * PAGE
        self.memory.write(mem, bytes(page), "device page")
        host.on_bind_dma = self.bind
        host.on_send_dma = self.send
        if any(p.input_fd() is not None for p in self.ports):
            self.thread = threading.Thread(target=self._feed, name="dma-input", daemon=True)
            self.thread.start()

    # -- the hypercalls (vCPU thread) ---------------------------------------------
    def bind(self, key: int, dmas: int, packed: int) -> int:
        """BIND_DMA: 1 if done, 0 if refused."""
        self.check_key(key, "BIND_DMA")
        count, irq = (packed >> 8) & 0xFFFF, packed & 0xFF
        if irq >= LGUEST_IRQS:
            return 0
        with self.lock:
            if irq == 0:
                for b in self.bindings:
                    if b.key == key and b.dmas == dmas:
                        self.bindings.remove(b)
                        return 1
                return 0
            self.memory.check(dmas, count * DMA.size, "BIND_DMA buffers")
            if len(self.bindings) >= LGUEST_MAX_DMA:
                return 0
            self.bindings.append(Binding(key, dmas, count, irq))
        os.eventfd_write(self.wake_fd, 1)        # input may have been waiting for it
        return 1

    def send(self, key: int, dma: int) -> None:
        """SEND_DMA: the device listening on ``key`` takes the buffer now; the
        bytes it took go into the buffer's used length (0: nobody listens)."""
        self.check_key(key, "SEND_DMA")
        sections = self.sections(dma)
        sender = self.senders.get(key)
        used = sender(sections) if sender is not None else 0
        self.memory.set_u32(dma, used, "SEND_DMA used length")

    def check_key(self, key: int, call: str) -> None:
        if key % 4 or key >= self.memory.size:
            raise GuestFault(f"{call}: key {key:#x} is not an aligned address in guest memory")

    def sections(self, dma: int) -> list[memoryview]:
        """The buffers one struct lguest_dma describes, up to the first empty one."""
        raw = self.memory.read(dma, DMA.size, "struct lguest_dma")
        fields = DMA.unpack(raw)
        addrs, lens = fields[1:17], fields[17:]
        views = []
        for addr, length in zip(addrs, lens):
            if length == 0:
                break
            views.append(self.memory.slice(addr, length, "DMA section"))
        return views

    # -- filling bound buffers ----------------------------------------------------
    def fill(self, key: int, write: Callable[[list[memoryview]], int | None],
             any_buffer: bool = False) -> bool:
        """Hand ``write`` the sections of a buffer bound to ``key``: the first
        whose used length is 0 (the guest's "free"), or with ``any_buffer``
        the first at all. Its result goes into the used length and the
        binding's IRQ is raised; None from ``write`` means it wrote nothing.
        False if no buffer was there to fill."""
        with self.lock:
            for b in self.bindings:
                if b.key != key:
                    continue
                for i in range(b.count):
                    at = b.dmas + i * DMA.size
                    if any_buffer or self.memory.u32(at, "DMA used length") == 0:
                        n = write(self.sections(at))
                        if n is not None:
                            self.memory.set_u32(at, n)
                            self.host.interrupts.raise_irq(b.irq)
                        return True
        return False

    def interrupt(self, key: int) -> None:
        """Raise the IRQ of the first binding on ``key``, if any."""
        with self.lock:
            irq = next((b.irq for b in self.bindings if b.key == key), None)
        if irq is not None:
            self.host.interrupts.raise_irq(irq)

    # -- the input thread -----------------------------------------------------------
    def _feed(self) -> None:
        """Poll each device's input; a device with input but no free buffer
        is looked at again on the next BIND_DMA, or after RETRY_S (the guest
        frees a buffer by zeroing its used length, which it tells nobody)."""
        ports = {p.input_fd(): p for p in self.ports if p.input_fd() is not None}
        poller = select.poll()
        for fd in (self.stop_fd, self.wake_fd, *ports):
            poller.register(fd, select.POLLIN)
        waiting: set[int] = set()
        try:
            while True:
                events = poller.poll(RETRY_S * 1000 if waiting else None)
                ready = {fd for fd, _ in events}
                if self.stop_fd in ready:
                    return
                if self.wake_fd in ready:
                    os.eventfd_read(self.wake_fd)
                for fd in waiting:
                    poller.register(fd, select.POLLIN)
                    ready.add(fd)
                waiting.clear()
                for fd in ready & ports.keys():
                    keep = ports[fd].on_input()
                    if keep is not True:
                        poller.unregister(fd)
                        if keep is None:
                            waiting.add(fd)
                        else:
                            del ports[fd]
        except GuestFault as fault:
            self.host.stop("killed", str(fault))
        except Exception as exc:          # a host-side failure: end the guest, say why
            self.host.stop("killed", f"the DMA devices' input failed: {exc!r}")

    def shutdown(self) -> None:
        if self.stop_fd < 0:
            return
        if self.thread is not None:
            os.eventfd_write(self.stop_fd, 1)
            self.thread.join(5)
            self.thread = None
        for port in self.ports:
            port.stop()
        for fd in (self.stop_fd, self.wake_fd):
            os.close(fd)
        self.stop_fd = self.wake_fd = -1
