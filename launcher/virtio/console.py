"""virtio-console (type 3): queue 0 carries input to the guest, queue 1 its
output (docs/abi.md §9.6).

Output is written out whole. If it cannot be written at all (stdout is a
pipe whose reader went away, a terminal that hung up, a full disk) the run
ends with that reason, the way SIGPIPE ends a writer: a guest nobody can
hear has no reason to run on. Input is read from a file descriptor (stdin
usually) only while the guest has offered a buffer for it, one read per
buffer; at end of input the console stops reading. Three reads that each
return a lone ^C, within a second, stop the guest: the way out of an
interactive guest, as under lguest.
"""
from __future__ import annotations

import os
import time
from typing import BinaryIO, Callable

from ..errors import GuestFault
from .device import Device
from .vring import Vring

VIRTIO_ID_CONSOLE = 3
VIRTIO_CONSOLE_F_EMERG_WRITE = 2
# virtio_console_config {u16 cols, u16 rows, u32 max_nr_ports, u32 emerg_wr}
EMERG_WR_OFFSET = 8
CTRL_C = b"\x03"
CTRL_C_WINDOW = 1.0


class OutputClosed(GuestFault):
    """The console's output went away. Not the guest's doing, but it ends the
    run the same way a fault does: with this sentence as the reason."""


class Console(Device):
    type = VIRTIO_ID_CONSOLE
    name = "console"
    num_queues = 2

    def __init__(self, out: BinaryIO, in_fd: int | None = None,
                 on_interrupt: Callable[[], None] = lambda: None) -> None:
        self.out, self.in_fd, self.on_interrupt = out, in_fd, on_interrupt
        self.ctrl_c: list[float] = []
        self.input_waiting = False       # stdin has data but no buffer was free
        self.eof = False
        self.output = bytearray() if out is None else None
        self.out_closed = False

    def describe(self) -> str:
        source = "no input" if self.in_fd is None else "input from stdin"
        return f"console: virtio console, output to stdout, {source}"

    def start(self, queues) -> None:
        super().start(queues)
        self.input_waiting = False       # a reboot starts with fresh rings

    # Over virtio-PCI (G3) the console also offers the emergency write: a
    # byte written to emerg_wr goes straight out, even before the driver
    # is up. The guest's earliest messages arrive this way.
    def modern_features(self) -> int:
        return self.features() | (1 << VIRTIO_CONSOLE_F_EMERG_WRITE)

    def modern_config(self) -> bytes:
        return bytes(EMERG_WR_OFFSET + 4)

    def emergency_write_offset(self) -> int | None:
        return EMERG_WR_OFFSET

    def emergency_write(self, data: bytes) -> None:
        self.write(data)

    def extra_fds(self) -> list[int]:
        return [] if self.in_fd is None else [self.in_fd]

    def service(self, index: int, vq: Vring) -> None:
        if index == 1:
            while (chain := vq.pop()) is not None:
                self.write(chain.read_all())
                vq.push(chain.head, 0)
        elif self.input_waiting:
            self.input_waiting = False
            self.read_input()
            if self.eof:
                self.input_waiting = False

    def write(self, data: bytes) -> None:
        if self.out_closed:
            return
        try:
            self.out.write(data)
            self.out.flush()
        except BlockingIOError:
            pass                        # a non-blocking stdout that is full: drop it
        except (OSError, ValueError) as exc:
            self.out_closed = True
            why = getattr(exc, "strerror", None) or "it is closed"
            self._discard_output()
            raise OutputClosed(f"the console's output could not be written ({why})") from None

    def _discard_output(self) -> None:
        """From now on the output's descriptor leads to /dev/null, so that
        nothing else (the early console, Python flushing stdout at exit)
        trips over it again."""
        try:
            fd = self.out.fileno()
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        except (OSError, ValueError, AttributeError):
            return
        try:
            os.dup2(null, fd)
        except OSError:
            pass
        finally:
            os.close(null)

    def on_fd(self, fd: int) -> bool | None:
        """stdin is readable: True to keep polling it, None to pause until
        the guest offers a buffer, False at end of input."""
        if self.eof:
            return False
        if not self.queues[0].pending():
            self.input_waiting = True
            return None
        self.read_input()
        return not self.eof

    def read_input(self) -> None:
        vq = self.queues[0]
        chain = vq.pop()
        if chain is None:
            self.input_waiting = True
            return
        try:
            data = os.readv(self.in_fd, chain.writable)
        except BlockingIOError:
            data = 0
        except OSError:
            data = 0
            self.eof = True
        if data == 0 and not self.eof:
            self.eof = True
        vq.push(chain.head, data)
        self.took_input(b"".join(bytes(b) for b in chain.writable)[:data])

    def took_input(self, data: bytes) -> None:
        """Keystrokes may arrive together (the guest took its time to offer
        a buffer): each ^C counts, anything else starts the count again."""
        for byte in data:
            if byte == CTRL_C[0]:
                self.count_ctrl_c()
            else:
                self.ctrl_c.clear()

    def count_ctrl_c(self) -> None:
        now = time.monotonic()
        self.ctrl_c = [t for t in self.ctrl_c if now - t < CTRL_C_WINDOW] + [now]
        if len(self.ctrl_c) >= 3:
            self.ctrl_c.clear()
            self.on_interrupt()
