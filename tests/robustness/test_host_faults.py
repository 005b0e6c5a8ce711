"""Faults of the host side, at the device level (no KVM): a console whose
output went away and a tap that vanished. The same faults with a guest
running are in test_host_faults_kvm.py."""
from __future__ import annotations

import os
import socket

import pytest

from launcher.errors import GuestFault
from launcher.memory import GuestMemory
from launcher.virtio.console import Console, OutputClosed
from launcher.virtio.device import DeviceRunner
from launcher.hostnet.tap import TapBackend
from launcher.virtio.net import Net
from virtio_driver import FakeDriver

RING = 0x10000


@pytest.fixture
def memory():
    return GuestMemory(bytearray(1 << 20))


@pytest.fixture
def closed_pipe():
    """The write end of a pipe whose reader is gone, as a binary file."""
    r, w = os.pipe()
    os.close(r)
    f = open(w, "wb")
    yield f
    try:
        f.close()
    except OSError:
        pass


def test_console_output_to_a_closed_pipe_ends_the_run_with_the_reason(memory, closed_pipe):
    con = Console(closed_pipe)
    inq, outq = FakeDriver(memory, RING), FakeDriver(memory, RING + 0x4000, data=0xC0000)
    con.start([inq.vring, outq.vring])
    outq.offer([b"nobody reads this\n"], [])
    with pytest.raises(OutputClosed, match=r"^the console's output could not be written "
                                           r"\(Broken pipe\)$") as info:
        con.service(1, outq.vring)
    assert isinstance(info.value, GuestFault)      # the device thread's way to end a run
    # From then on the descriptor leads to /dev/null: later writes (the
    # early console, Python's flush at exit) neither fail nor raise.
    con.write(b"more\n")
    closed_pipe.write(b"and more\n")
    closed_pipe.flush()
    assert os.path.samestat(os.fstat(closed_pipe.fileno()), os.stat(os.devnull))


def test_device_thread_turns_the_closed_output_into_a_stop(memory, closed_pipe):
    con = Console(closed_pipe)
    inq, outq = FakeDriver(memory, RING), FakeDriver(memory, RING + 0x4000, data=0xC0000)
    faults = []
    runner = DeviceRunner(con, [inq.vring, outq.vring], [1, 2], lambda irq: None, faults.append)
    outq.offer([b"hello\n"], [])
    runner.start()                   # services what is already offered, then polls
    runner.thread.join(10)
    assert not runner.thread.is_alive()
    runner.stop()
    assert faults == ["the console's output could not be written (Broken pipe)"]


def test_console_output_to_a_closed_file_object(memory):
    import io
    out = io.BytesIO()
    out.close()
    con = Console(out)
    with pytest.raises(OutputClosed, match="it is closed"):
        con.write(b"x")


def test_full_nonblocking_output_drops_and_carries_on(memory):
    r, w = os.pipe()
    os.set_blocking(w, False)
    f = open(w, "wb", buffering=0)
    try:
        con = Console(f)
        for _ in range(200):         # far more than a pipe holds
            con.write(b"x" * 4096)
        assert not con.out_closed
    finally:
        f.close()
        os.close(r)


def test_a_vanished_tap_drops_frames_says_so_once_and_stops_receiving(memory, capsys):
    host_end, tap_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap_end.setblocking(False)
    net = Net(TapBackend(fd=tap_end.fileno()))
    rx, tx = FakeDriver(memory, RING), FakeDriver(memory, RING + 0x4000, data=0xC0000)
    net.start([rx.vring, tx.vring])
    host_end.close()                                     # the host side is gone
    for i in range(3):
        tx.offer([bytes(10), b"frame %d" % i], [])
    net.service(1, tx.vring)
    assert [n for _, n in tx.used()] == [0, 0, 0]        # taken and dropped, not stuck
    rx.offer([], [1526])
    assert net.on_fd(tap_end.fileno()) is False          # nothing will come: stop polling it
    assert rx.used() == []                               # the buffer stays the guest's
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launcher: net0: the tap device ") and \
        "the guest's frames are dropped" in err
    tap_end.close()
