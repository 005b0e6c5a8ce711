"""Where a guest's network frames go on the host: virtio-net's back ends.

The device (launcher/virtio/net.py) owns the virtqueues and the virtio
header; a back end only moves frames:

- ``tap``    ``--tunnet``: a tap device the host routes or bridges (root);
             frames cross it with the virtio header in front, untouched.
- ``passt``  ``--net user``: user-mode networking through passt(1), no root;
             frames cross a stream socket, each behind a 4-byte length.

Both implement ``NetBackend`` below. Read tap.py first: it is the simpler.
"""
from __future__ import annotations


class NetBackend:
    """What virtio-net asks of a back end.

    ``fd`` is polled for readability by the device's thread once
    ``attach`` has run. Frames handed to ``send`` and written by
    ``receive_into`` start with the virtio-net header of ``header_len``
    bytes; a back end whose wire has no such header adds or strips it.
    """

    name = "net"
    fd: int = -1
    header_len = 10
    offloads = 0        # virtio-net feature bits the back end can honour (csum, TSO)

    def attach(self) -> None:
        """Acquire the host side (open the tap, start passt). Called only
        where the guest really runs, never by a launcher that hands the run
        to the testbed."""

    def set_header_len(self, n: int) -> None:
        self.header_len = n

    def accept(self, features: int) -> None:
        """The virtio-net features the guest's driver accepted: a back end
        that can hand the guest checksum-less or segmented frames must stop
        doing so for the ones it declined."""

    def send(self, bufs: list[memoryview]) -> None:
        """One frame, header first, possibly split across buffers. A full
        host side drops it, as a wire would. Raises OSError if the host side
        is gone."""
        raise NotImplementedError

    def receive_into(self, bufs: list[memoryview]) -> int:
        """Write one frame (header first) into bufs; its length, 0 at end of
        file. Raises BlockingIOError when no frame is waiting."""
        raise NotImplementedError

    def buffered(self) -> bool:
        """Frames already read from the host side, waiting for a guest buffer."""
        return False

    def label(self) -> str:
        """What to call the host side in one line ("the tap device tap0")."""
        return self.name

    def describe(self) -> str:
        """The label and how it is set up, for --verbose."""
        return self.label()

    def close(self) -> None:
        pass
