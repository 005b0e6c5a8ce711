import mmap
import multiprocessing
import os

import pytest

from launcher.errors import GuestFault, GuestMemoryError
from launcher.memory import GuestMemory


def test_reads_and_writes_inside_memory():
    m = GuestMemory(bytearray(64))
    m.set_u32(0, 0x11223344)
    m.set_u64(8, 0x0102030405060708)
    m.set_u16(20, 0xBEEF)
    assert m.u32(0) == 0x11223344 and m.u8(0) == 0x44
    assert m.u64(8) == 0x0102030405060708
    assert m.u16(20) == 0xBEEF
    m.write(60, b"abcd")
    assert m.read(60, 4) == b"abcd"


@pytest.mark.parametrize("addr,length", [(61, 4), (64, 1), (-1, 1), (0, 65), (2**32, 4)])
def test_every_access_outside_memory_is_a_guest_fault(addr, length):
    m = GuestMemory(bytearray(64))
    with pytest.raises(GuestMemoryError) as info:
        m.read(addr, length, "test")
    assert isinstance(info.value, GuestFault)
    assert f"{addr:#x}" in str(info.value)


def test_cstring_stops_at_nul_and_checks_the_whole_window():
    m = GuestMemory(bytearray(b"hello\0world" + bytes(5)))
    assert m.cstring(0, 16) == b"hello"
    with pytest.raises(GuestMemoryError):
        m.cstring(6, 16)


def test_aligned_accesses_are_whole_and_unaligned_ones_still_work():
    m = GuestMemory(bytearray(64))
    m.set_u16(1, 0xA1B2)
    m.set_u32(5, 0xC1D2E3F4)
    m.set_u64(17, 0x0102030405060708)
    assert (m.u16(1), m.u32(5), m.u64(17)) == (0xA1B2, 0xC1D2E3F4, 0x0102030405060708)
    assert m.read(1, 2) == b"\xb2\xa1"                  # little-endian either way
    m.set_u32(8, 0x11223344)
    assert m.read(8, 4) == b"\x44\x33\x22\x11" and m.u16(10) == 0x1122
    m.release()


# ---- the guest runs while we write: no store may be seen half-done -------------------------
# A second process (its own interpreter, so truly concurrent, as the guest
# is) reads a word with single loads while we flip it between two values
# whose every byte is non-zero. A store done in pieces (struct.pack_into
# zero-fills the field, then stores it byte by byte) is seen as a third
# value thousands of times in these flips on two CPUs.
WIDTHS = {2: ("H", 0x0101, 0x0202), 4: ("I", 0x01010101, 0x02020202),
          8: ("Q", 0x0101010101010101, 0x0202020202020202)}
FLIPS = 200_000


def _watch(buf, width: int, conn) -> None:
    """In the child: read the word until told to stop; send how many reads
    were neither value."""
    fmt, a, b = WIDTHS[width]
    view = memoryview(buf).cast(fmt)
    at, torn = 8 // width, 0
    conn.send("ready")
    while not conn.poll():
        for _ in range(1000):
            if view[at] not in (a, b):
                torn += 1
    conn.send(torn)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs: one process writes while another reads")
@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_a_concurrent_reader_never_sees_a_word_half_written(width):
    fmt, a, b = WIDTHS[width]
    buf = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    m = GuestMemory(buf)
    store = {2: m.set_u16, 4: m.set_u32, 8: m.set_u64}[width]
    store(8, a)
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_watch, args=(buf, width, theirs))
    child.start()
    try:
        assert ours.recv() == "ready"
        for _ in range(FLIPS):
            store(8, b)
            store(8, a)
        ours.send("stop")
        torn = ours.recv()
    finally:
        child.join(10)
        m.release()
        buf.close()
    assert torn == 0
