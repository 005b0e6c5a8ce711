import pytest

from fakes import FakeMachine
from launcher import descriptors as D
from launcher.errors import GuestFault
from launcher.host.segments import Segments


def test_ring0_descriptors_become_ring1_and_accessed():
    m = FakeMachine()
    s = Segments(m, m.memory)
    code0 = D.segment(0, 0xFFFFF, 0xA, 0) & ~D.SEG_ACCESSED
    s.load_gdt_entry(12, *D.split(code0))
    assert D.dpl(m.gdt[12]) == 1 and m.gdt[12] & D.SEG_ACCESSED
    user = D.segment(0, 0xFFFFF, 0x2, 3)
    s.load_gdt_entry(15, *D.split(user))
    assert D.dpl(m.gdt[15]) == 3


@pytest.mark.parametrize("index", [10, 11, 16, 31])
def test_host_entries_are_never_replaced(index):
    m = FakeMachine()
    m.gdt[index] = 0x1234
    Segments(m, m.memory).load_gdt_entry(index, 0xFFFF, 0x00CF9A00)
    assert m.gdt[index] == 0x1234


def test_index_past_the_gdt_kills():
    m = FakeMachine()
    with pytest.raises(GuestFault, match="index 32"):
        Segments(m, m.memory).load_gdt_entry(32, 0, 0)


def test_load_tls_reads_three_descriptors_and_checks_the_address():
    m = FakeMachine()
    s = Segments(m, m.memory)
    descs = [D.segment(0x1000 * i, 0xFFFFF, 0x2, 3) for i in (1, 2, 3)]
    m.memory.write(0x3000, b"".join(d.to_bytes(8, "little") for d in descs))
    s.load_tls(0x3000)
    assert [m.gdt[6 + i] for i in range(3)] == [d | D.SEG_ACCESSED for d in descs]
    with pytest.raises(GuestFault):
        s.load_tls(m.memory.size - 8)
