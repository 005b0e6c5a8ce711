"""Linux 2.6.23's DMA devices (launcher/dma/) on a fake Host: the descriptor
page, BIND_DMA and SEND_DMA with their checks, console, block and net."""
import io
import os
import socket
import struct
import time

import pytest

from fakes import FakeMachine
from launcher.dma import DmaBus, pages_needed
from launcher.dma.bus import DMA, DESC
from launcher.errors import GuestFault, UserError
from launcher.generations import G0
from launcher.host import Host
from launcher.hostnet.tap import TapBackend
from launcher.switcher import EAX, EBX, ECX, EDX, TRAPNUM
from launcher.virtio.block import Block
from launcher.virtio.console import Console
from launcher.virtio.net import Net
from launcher.virtio.rng import Rng

MEM = 2 << 20
BIND_DMA, SEND_DMA = 12, 13
DMAS = 0x10000          # where the tests put their struct lguest_dma arrays
DATA = 0x20000


def wait_for(cond, what):
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


class Rig:
    def __init__(self, tmp_path, with_input=False, readonly=False):
        disk = tmp_path / "disk"
        disk.write_bytes(bytes(range(256)) * 64)          # 16 KiB, 32 sectors
        self.tap_end, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.out = io.BytesIO()
        self.keys_r, self.keys_w = os.pipe() if with_input else (None, None)
        self.interrupted = []
        self.console = Console(self.out, self.keys_r, lambda: self.interrupted.append(1))
        self.block = Block(str(disk), readonly)
        self.net = Net(TapBackend(fd=guest_end.detach()))
        devices = [self.block, self.net, self.console]
        m = FakeMachine(MEM + pages_needed(devices) * 4096)
        self.host = Host(m, generation=G0)
        self.raised = []
        self.host.interrupts.raise_irq = self.raised.append
        self.stopped = []
        self.host.stop = lambda kind, why: self.stopped.append(why)
        self.host.lguest_data = object()      # past LGUEST_INIT, for hypercall()
        self.host.async_ring.drain = lambda: None
        self.memory = m.memory
        self.bus = DmaBus(devices)
        self.bus.install(self.host, MEM)
        self.disk = disk

    def page_of(self, index):
        return DESC.unpack(self.memory.read(MEM + index * DESC.size, DESC.size))[4] * 4096

    def dma(self, at, sections):
        """Write a struct lguest_dma at ``at`` over (addr, len) sections."""
        addrs = [a for a, _ in sections] + [0] * (16 - len(sections))
        lens = [n for _, n in sections] + [0] * (16 - len(sections))
        self.memory.write(at, DMA.pack(0, *addrs, *lens))
        return at

    def call(self, number, a=0, b=0, c=0):
        """A 2.6.23 hypercall: arguments in edx, ebx, ecx."""
        r = self.host.regs
        r[TRAPNUM], r[EAX], r[EDX], r[EBX], r[ECX] = 0x1F, number, a, b, c
        self.host.handle_trap()
        return r[EAX]

    def close(self):
        self.bus.shutdown()
        for d in (self.block, self.net, self.console):
            d.close()
        self.tap_end.close()
        for fd in (self.keys_r, self.keys_w):
            if fd is not None:
                os.close(fd)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_descriptor_page(rig):
    types = [DESC.unpack(rig.memory.read(MEM + i * DESC.size, DESC.size)) for i in range(4)]
    assert types[0][:4] == (3, 0x8000, 0, 1)          # block: randomness, one page
    assert types[1][:4] == (2, 0x8001, 0, 1)          # net: the guest is slot 1
    assert types[2] == (1, 0, 0, 0, 0)                # console: no page
    assert types[3] == (0, 0, 0, 0, 0)                # the end
    assert rig.page_of(0) == MEM + 4096 and rig.page_of(1) == MEM + 2 * 4096
    assert struct.unpack_from("<I", rig.memory.read(rig.page_of(0) + 16, 4))[0] == 32
    assert rig.memory.read(rig.page_of(1), 6) == b"\x01" + bytes(5)   # us, promiscuous


def test_console_output_is_written_whole(rig):
    rig.memory.write(DATA, b"Linux version 2.6.23\n")
    rig.memory.write(DATA + 0x2000, b"more")
    dma = rig.dma(DMAS, [(DATA, 21), (DATA + 0x2000, 4)])
    rig.call(SEND_DMA, 0, dma)
    assert rig.out.getvalue() == b"Linux version 2.6.23\nmore"
    assert rig.memory.u32(dma) == 25                  # used length: all of it


def test_console_input_waits_for_a_free_buffer(tmp_path):
    r = Rig(tmp_path, with_input=True)
    try:
        os.write(r.keys_w, b"ls\n")
        time.sleep(0.05)                               # nothing bound yet: it waits
        assert r.raised == []
        buf = r.dma(DMAS, [(DATA, 256)])
        assert r.call(BIND_DMA, 0, buf, 1 << 8 | 3) == 1
        wait_for(lambda: r.memory.u32(buf) == 3, "the input")
        assert r.memory.read(DATA, 3) == b"ls\n" and r.raised == [3]
        os.write(r.keys_w, b"pwd\n")                   # the buffer is still full
        time.sleep(0.05)
        assert r.memory.u32(buf) == 3
        r.memory.set_u32(buf, 0)                        # the guest took it
        wait_for(lambda: r.memory.u32(buf) == 4, "the second line")
        assert r.memory.read(DATA, 4) == b"pwd\n"
    finally:
        r.close()


def test_three_ctrl_c_stop_the_guest(tmp_path):
    r = Rig(tmp_path, with_input=True)
    try:
        buf = r.dma(DMAS, [(DATA, 256)])
        r.call(BIND_DMA, 0, buf, 1 << 8 | 3)
        os.write(r.keys_w, b"\x03\x03\x03")
        wait_for(lambda: r.interrupted, "three ^C")
    finally:
        r.close()


def block_request(rig, kind, sector, length):
    page = rig.page_of(0)
    rig.memory.write(page, struct.pack("<iIIi", kind, sector, length, 0))
    return page


def test_block_write_reaches_the_file_then_interrupts(rig):
    page = rig.page_of(0)
    reply = rig.dma(DMAS, [(DATA + 0x4000, 512)])
    assert rig.call(BIND_DMA, page, reply, 1 << 8 | 1) == 1
    rig.memory.write(DATA, b"W" * 1024)
    block_request(rig, 1, 2, 1024)
    rig.call(SEND_DMA, page, rig.dma(DMAS + 0x100, [(DATA, 512), (DATA + 512, 512)]))
    assert rig.disk.read_bytes()[1024:2048] == b"W" * 1024
    assert rig.memory.u32(page + 12) == 1 and rig.raised == [1]


def test_block_read_fills_the_bound_buffer(rig):
    page = rig.page_of(0)
    reply = rig.dma(DMAS, [(DATA, 256), (DATA + 0x1000, 256)])
    rig.call(BIND_DMA, page, reply, 1 << 8 | 1)
    block_request(rig, 0, 1, 512)
    rig.call(SEND_DMA, page, rig.dma(DMAS + 0x100, []))
    expect = (bytes(range(256)) * 64)[512:1024]
    assert rig.memory.read(DATA, 256) + rig.memory.read(DATA + 0x1000, 256) == expect
    assert rig.memory.u32(page + 12) == 1 and rig.raised == [1]


@pytest.mark.parametrize("kind,sector", [(0, 40), (1, 31)])
def test_block_requests_past_the_end_fail(rig, kind, sector):
    page = rig.page_of(0)
    rig.call(BIND_DMA, page, rig.dma(DMAS, [(DATA, 1024)]), 1 << 8 | 1)
    before = rig.disk.read_bytes()
    block_request(rig, kind, sector, 1024)
    rig.call(SEND_DMA, page, rig.dma(DMAS + 0x100, [(DATA, 1024)] if kind else []))
    assert rig.memory.u32(page + 12) == 2 and rig.raised == [1]
    assert rig.disk.read_bytes() == before


def test_a_read_only_disk_refuses_writes(tmp_path):
    r = Rig(tmp_path, readonly=True)
    try:
        page = r.page_of(0)
        r.call(BIND_DMA, page, r.dma(DMAS, [(DATA, 512)]), 1 << 8 | 1)
        block_request(r, 1, 0, 512)
        r.call(SEND_DMA, page, r.dma(DMAS + 0x100, [(DATA, 512)]))
        assert r.memory.u32(page + 12) == 2
        assert r.disk.read_bytes()[:4] == bytes(range(4))
    finally:
        r.close()


def test_net_frames_both_ways(rig):
    page = rig.page_of(1)
    frame = b"\xff" * 6 + b"\x02\x00\x12\x34\x00\x00" + b"\x08\x00" + b"x" * 50
    rig.memory.write(DATA, frame)
    sent = rig.dma(DMAS, [(DATA, len(frame))])
    rig.call(SEND_DMA, page, sent)                  # to slot 0: the Launcher
    assert rig.tap_end.recv(2048) == bytes(10) + frame
    assert rig.memory.u32(sent) == len(frame)
    bufs = [rig.dma(DMAS + 0x100 + i * DMA.size, [(DATA + 0x2000 + i * 0x800, 1514)])
            for i in range(2)]
    assert rig.call(BIND_DMA, page + 4, bufs[0], 2 << 8 | 2) == 1
    rig.tap_end.send(bytes(10) + b"A" * 60)
    rig.tap_end.send(bytes(10) + b"B" * 70)
    wait_for(lambda: rig.memory.u32(bufs[1]) == 70, "two frames")
    assert rig.memory.u32(bufs[0]) == 60 and rig.raised == [2, 2]
    assert rig.memory.read(DATA + 0x2800, 70) == b"B" * 70


def test_frames_to_nobody_are_not_taken(rig):
    rig.memory.write(DATA, b"z" * 60)
    sent = rig.dma(DMAS, [(DATA, 60)])
    rig.memory.set_u32(sent, 99)
    rig.call(SEND_DMA, rig.page_of(1) + 8, sent)    # slot 2: no such peer
    assert rig.memory.u32(sent) == 0


def test_bindings_limits_and_unbinding(rig):
    buf = rig.dma(DMAS, [(DATA, 64)])
    assert rig.call(BIND_DMA, 0x8000, buf, 1 << 8 | 32) == 0      # IRQ past 31
    for i in range(32):
        assert rig.call(BIND_DMA, 0x8000 + 4 * i, buf, 1 << 8 | 5) == 1
    assert rig.call(BIND_DMA, 0x9000, buf, 1 << 8 | 5) == 0       # all 32 taken
    assert rig.call(BIND_DMA, 0x8000, buf, 0) == 1                 # irq 0: unbind
    assert rig.call(BIND_DMA, 0x8000, buf, 0) == 0                 # not bound any more
    assert rig.call(BIND_DMA, 0x9000, buf, 1 << 8 | 5) == 1


@pytest.mark.parametrize("number,args,match", [
    (BIND_DMA, (0x8002, DMAS, 1 << 8 | 1), "not an aligned address"),
    (BIND_DMA, (MEM + 0x100000, DMAS, 1 << 8 | 1), "not an aligned address"),
    (BIND_DMA, (0x8000, MEM + 3 * 4096 - 50, 1 << 8 | 1), "BIND_DMA buffers"),
    (BIND_DMA, (0x8000, DMAS, 0xFFFF << 8 | 1), "BIND_DMA buffers"),
    (SEND_DMA, (0, MEM + 0x100000, 0), "struct lguest_dma"),
])
def test_lying_guests_are_killed(rig, number, args, match):
    with pytest.raises(GuestFault, match=match):
        rig.call(number, *args)


def test_a_section_outside_memory_kills(rig):
    with pytest.raises(GuestFault, match="DMA section"):
        rig.call(SEND_DMA, 0, rig.dma(DMAS, [(MEM + 0x100000, 100)]))
    with pytest.raises(GuestFault, match="DMA section"):
        rig.call(SEND_DMA, 0, rig.dma(DMAS, [(0xFFFFFFF0, 0x100)]))


def test_what_2_6_23_cannot_have_is_refused():
    with pytest.raises(UserError, match="no driver for the rng"):
        DmaBus([Rng()])
    a, b = socket.socketpair()
    try:
        with pytest.raises(UserError, match="drop mac="):
            DmaBus([Net(TapBackend(fd=a.fileno()), 0, b"\x52" * 6, mac_given=True)])
    finally:
        a.close()
        b.close()
