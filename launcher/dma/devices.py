"""Each device's side of the DMA bus (Linux 2.6.23's drivers).

A port wraps the same host-side object the virtio transports use, so a
disk file, the console's stdin and stdout, a tap or passt behave alike
whatever the guest's generation:

- console (type 1, ``hvc_lguest``, hvc0): output is SEND_DMA on key 0,
  written out whole; input goes into the one buffer the driver binds on
  key 0. Three lone ^C within a second stop the guest, as on virtio.
- block (type 3, ``lguest_blk``, /dev/lgba): its page holds {type,
  sector, bytes, result, num_sectors}. A write is SEND_DMA of the data on
  the page's key; a read is an empty SEND_DMA, answered by filling the
  buffer bound on that key. ``result`` 1 is done, 2 an error; the bound
  IRQ says so. The driver knows no flush, so every write reaches the disk
  before the guest hears it is done.
- net (type 2, ``lguest_net``, eth0): its page is a table of peers' MACs,
  slot 1 the guest's (the low bits of ``features``), slot 0 the Launcher's.
  The guest sends a frame to each peer whose MAC matches or that is marked
  promiscuous (bit 0 of its first byte), on key page + 4 * slot; slot 0 is
  so marked, so every frame comes to us. Frames to the guest go into the
  buffers it binds on page + 4. No header, no offloads.
"""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Callable

from ..errors import UserError
from ..virtio.block import SECTOR, Block
from ..virtio.console import Console
from ..virtio.device import Device
from ..virtio.net import LEGACY_HDR_LEN, Net

if TYPE_CHECKING:
    from .bus import DmaBus

LGUEST_DEVICE_T_CONSOLE, LGUEST_DEVICE_T_NET, LGUEST_DEVICE_T_BLOCK = 1, 2, 3
LGUEST_DEVICE_F_RANDOMNESS = 0x8000    # its interrupts may feed the entropy pool
LGUEST_CONSOLE_DMA_KEY = 0
BLOCK_PAGE = struct.Struct("<iIIiI")   # struct lguest_block_page
BLOCK_RESULT_OFFSET = 12
BLOCK_DONE, BLOCK_ERROR = 1, 2
NET_GUEST_SLOT = 1                     # the slot the guest takes (features' low bits)
NET_PROMISC = 0x01
Sender = Callable[[list[memoryview]], int]


class DmaPort:
    """One device on the DMA bus."""
    type = 0
    pages = 0                    # pages of its own after the descriptor page
    features = 0

    def __init__(self, device: Device) -> None:
        self.device = device

    def install(self, bus: "DmaBus", page: int) -> dict[int, Sender]:
        """Set up its pages (at ``page``); the keys it takes SEND_DMA on."""
        self.bus = bus
        return {}

    def describe(self) -> str:
        """One line for --verbose."""
        return self.device.describe()

    def input_fd(self) -> int | None:
        return None

    def on_input(self) -> bool | None:
        """Its input is readable: True to keep polling, None to look again
        once the guest may have freed a buffer, False to stop."""
        return False

    def stop(self) -> None:
        self.device.stop()


class ConsolePort(DmaPort):
    type = LGUEST_DEVICE_T_CONSOLE

    def __init__(self, device: Console) -> None:
        super().__init__(device)
        self.console = device

    def describe(self) -> str:
        source = "no input" if self.console.in_fd is None else "input from stdin"
        return f"console: lguest console (hvc0), output to stdout, {source}"

    def install(self, bus: "DmaBus", page: int) -> dict[int, Sender]:
        super().install(bus, page)
        return {LGUEST_CONSOLE_DMA_KEY: self.output}

    def output(self, sections: list[memoryview]) -> int:
        data = b"".join(sections)
        self.console.write(data)
        return len(data)

    def input_fd(self) -> int | None:
        return self.console.in_fd

    def on_input(self) -> bool | None:
        if not self.bus.fill(LGUEST_CONSOLE_DMA_KEY, self.read):
            return None
        return not self.console.eof

    def read(self, sections: list[memoryview]) -> int | None:
        try:
            n = os.readv(self.console.in_fd, sections)
        except BlockingIOError:
            return None
        except OSError:
            n = 0
        if n == 0:
            self.console.eof = True
            return None
        self.console.took_input(b"".join(bytes(s) for s in sections)[:n])
        return n


class BlockPort(DmaPort):
    type = LGUEST_DEVICE_T_BLOCK
    pages = 1
    features = LGUEST_DEVICE_F_RANDOMNESS

    def __init__(self, device: Block) -> None:
        super().__init__(device)
        self.block = device

    def describe(self) -> str:
        b = self.block
        return (f"{b.name}: lguest disk on {b.path}, {b.size} bytes"
                f"{', read-only' if b.readonly else ''}")

    def install(self, bus: "DmaBus", page: int) -> dict[int, Sender]:
        super().install(bus, page)
        self.page = page
        sectors = min(self.block.size // SECTOR, 0xFFFFFFFF)
        bus.memory.write(page, BLOCK_PAGE.pack(0, 0, 0, 0, sectors), "block page")
        return {page: self.request}

    def request(self, sections: list[memoryview]) -> int:
        """One request the page describes: the sent sections are a write's
        data; a read fills the buffer bound on the page."""
        kind, sector, length, _result, _n = BLOCK_PAGE.unpack(
            self.bus.memory.read(self.page, BLOCK_PAGE.size, "block page"))
        if kind:
            done = self.block.io(True, sector, sections)
            self.finish(done is not None and done == length)
        elif not self.bus.fill(self.page, lambda bufs: self.read(sector, length, bufs),
                               any_buffer=True):
            self.finish(False)             # nothing bound to read into
        return 0

    def read(self, sector: int, length: int, bufs: list[memoryview]) -> int:
        done = self.block.io(False, sector, bufs)
        self.set_result(done is not None and done == length)
        return done or 0

    def set_result(self, ok: bool) -> None:
        self.bus.memory.set_u32(self.page + BLOCK_RESULT_OFFSET, BLOCK_DONE if ok else BLOCK_ERROR)

    def finish(self, ok: bool) -> None:
        self.set_result(ok)
        self.bus.interrupt(self.page)


class NetPort(DmaPort):
    type = LGUEST_DEVICE_T_NET
    pages = 1
    features = NET_GUEST_SLOT | LGUEST_DEVICE_F_RANDOMNESS

    def __init__(self, device: Net) -> None:
        super().__init__(device)
        self.net = device
        if device.mac_given:
            raise UserError(f"{device.name}: Linux 2.6.23 makes its MAC itself "
                            "(02:00:xx:xx:00:00); drop mac=")

    def describe(self) -> str:
        return (f"{self.net.name}: lguest network card on {self.net.backend.describe()}, "
                "MAC 02:00 + the guest id + 00:00")

    def install(self, bus: "DmaBus", page: int) -> dict[int, Sender]:
        super().install(bus, page)
        self.receive_key = page + 4 * NET_GUEST_SLOT
        # The frames carry no virtio header; the back end speaks one, all
        # zero here, as no offload is ever on.
        backend = self.net.backend
        backend.set_header_len(LEGACY_HDR_LEN)
        backend.accept(0)
        self.header = memoryview(bytearray(LEGACY_HDR_LEN))
        bus.memory.write(page, bytes([NET_PROMISC, 0, 0, 0, 0, 0]), "net page")
        return {page: self.transmit}

    def transmit(self, sections: list[memoryview]) -> int:
        if self.net.gone:
            return 0                      # no carrier: the guest counts an error
        try:
            self.net.backend.send([memoryview(bytes(LEGACY_HDR_LEN)), *sections])
        except OSError as exc:
            self.net.host_side_gone(exc)
            return 0
        return sum(len(s) for s in sections)

    def input_fd(self) -> int | None:
        return self.net.backend.fd

    def on_input(self) -> bool | None:
        if self.net.gone:
            return False
        if not self.bus.fill(self.receive_key, self.receive):
            return None
        return not self.net.gone

    def receive(self, sections: list[memoryview]) -> int | None:
        try:
            n = self.net.backend.receive_into([self.header, *sections])
        except BlockingIOError:
            return None
        except OSError as exc:
            self.net.host_side_gone(exc)
            return None
        if n == 0:
            self.net.host_side_gone(None)
            return None
        return max(0, n - LEGACY_HDR_LEN)


def port_for(device: Device) -> DmaPort:
    """The DMA-bus side of a device; a UserError for one Linux 2.6.23 lacks."""
    if isinstance(device, Console):
        return ConsolePort(device)
    if isinstance(device, Block):
        return BlockPort(device)
    if isinstance(device, Net):
        return NetPort(device)
    raise UserError(f"Linux 2.6.23 has no driver for the {device.name} device "
                    "(its devices are a console, disks and network cards)")
