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
