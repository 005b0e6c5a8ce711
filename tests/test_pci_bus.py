"""The G3 PCI bus on a fake Host, without KVM: configuration cycles through
ports 0xCF8/0xCFC as Linux's conf1 code makes them, slot order and BAR
placement, MMIO routing, the early console through the PCI_CFG window,
and a device brought up and served end to end (docs/abi.md §10)."""
import io
import time

import pytest

from fakes import FakeMachine
from launcher.errors import GuestFault
from launcher.host import Host
from launcher.virtio.block import Block
from launcher.virtio.console import Console
from launcher.virtio.pci_bus import PciBus
from launcher.virtio.rng import Rng
from pci_driver import PciDriver
from virtio_driver import FakeDriver

MEM = 4 << 20


@pytest.fixture
def bus(tmp_path):
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(8192))
    out = io.BytesIO()
    devices = [Block(str(disk)), Rng(), Console(out)]      # the console comes last...
    host = Host(FakeMachine(MEM))
    raised = []
    host.interrupts.raise_irq = raised.append
    b = PciBus(devices, MEM)
    b.install(host)
    b.raised, b.out, b.driver = raised, out, PciDriver(b)
    yield b
    b.shutdown()


def test_the_conf1_probe_and_address_latch(bus):
    # arch/x86/pci/direct.c: outb 0x01 to 0xCFB, then outl 0x80000000 to 0xCF8.
    bus.port_out(0xCFB, 1, 0x01)
    assert bus.port_in(0xCFB, 1) == 0x01
    bus.port_out(0xCF8, 4, 0x80000000)
    assert bus.port_in(0xCF8, 4) == 0x80000000
    bus.port_out(0xCF8, 4, 0x80000000 | 1 << 11 | 0x3C)
    assert bus.port_in(0xCFA, 2) == 0x8000 and bus.port_in(0xCF9, 1) == 0x08


def test_slots(bus):
    d = bus.driver
    assert d.cfg_read(0, 0) == 0 and d.cfg_read(0, 8) >> 16 == 0x0600   # host bridge
    assert d.cfg_read(1, 0) == 0x10431AF4              # ...but is slot 1, line 1
    assert d.cfg_read(1, 0x3C, 1) == 1
    assert d.cfg_read(2, 0) == 0x10421AF4 and d.cfg_read(2, 0x3C, 1) == 2
    assert d.cfg_read(3, 0) == 0x10441AF4 and d.cfg_read(3, 0x3C, 1) == 3
    assert d.cfg_read(4, 0) == 0xFFFFFFFF              # empty slot
    assert d.cfg_read(1, 2, 2) == 0x1043 and d.cfg_read(1, 1, 1) == 0x1A


@pytest.mark.parametrize("address", [0x00000800, 0x80010800, 0x80000900, 0x80000898,
                                     0x800008FC])
def test_invalid_addresses_read_all_ones_and_refuse_writes(bus, address):
    # disabled, bus 1, function 1, register 152 and beyond
    bus.port_out(0xCF8, 4, address)
    assert bus.port_in(0xCFC, 4) == 0xFFFFFFFF and bus.port_in(0xCFE, 2) == 0xFFFF
    assert bus.port_out(0xCFC, 4, 0) is False


def test_other_ports(bus):
    assert bus.port_in(0x64, 1) == 1                   # the keyboard controller: idle
    assert bus.port_in(0x80, 1) == 0xFF and bus.port_in(0x70, 2) == 0xFFFF
    assert bus.port_out(0x80, 1, 0) is True            # io_delay and the like: dropped


def test_bars_are_above_ram_aligned_and_disjoint(bus):
    bars = [bus.driver.bar(slot) for slot in (1, 2, 3)]
    assert bars[0] >= MEM + (1 << 20)
    ends = []
    for slot, base in zip((1, 2, 3), bars):
        bus.driver.cfg_write(slot, 0x10, 0xFFFFFFFF)
        size = (~bus.driver.cfg_read(slot, 0x10) & 0xFFFFFFFF) + 1
        bus.driver.cfg_write(slot, 0x10, base)
        assert base % size == 0
        ends.append(base + size)
    assert bars[1] >= ends[0] and bars[2] >= ends[1] and bus.limit == ends[2]


def test_mmio_outside_every_bar_kills(bus):
    with pytest.raises(GuestFault, match="outside its memory and every device"):
        bus.mmio(MEM + 0x10, 4, None)
    base = bus.driver.bar(3)                           # rng: 60 bytes of registers
    with pytest.raises(GuestFault, match="past its 60 bytes"):
        bus.mmio(base + 60, 4, None)


def test_early_console_through_the_window(bus):
    """What the G3 guest's early_put_chars does for each character."""
    d = bus.driver
    for ch in b"hi\n":
        d.cfg_write(1, 0x88, 0, size=1)                # bar 0
        d.cfg_write(1, 0x90, 4)                        # length 4
        d.cfg_write(1, 0x8C, 60 + 8)                   # offset: emerg_wr
        assert d.cfg_write(1, 0x94, ch)
    assert bus.out.getvalue() == b"hi\n"


def test_rng_end_to_end(bus):
    d = bus.driver
    offered = d.negotiate(3)
    assert offered == 1 << 32
    ring = FakeDriver(bus.host.memory, 0x100000, num=64, data=0x200000)
    d.setup_queue(3, 0, ring)
    d.go(3)
    ring.offer([], [64])
    d.write(3, 56, 2, 0)                               # kick (the MMIO-exit path)
    deadline = time.monotonic() + 5
    while not bus.raised and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bus.raised == [3] and ring.used() == [(0, 64)]
    assert d.read(3, 58, 1) == 1                       # the ISR said "a queue"
    assert bus.mmio_counts["notify"] == 1 and bus.mmio_counts["isr"] == 1
    assert bus.host.mmio_kind(d.bar(3) + 56) == "mmio rng notify"


def test_block_end_to_end(bus):
    """A write then a read of sector 1 through the block device on slot 2."""
    import struct
    d = bus.driver
    d.negotiate(2)
    ring = FakeDriver(bus.host.memory, 0x100000, num=64, data=0x200000)
    d.setup_queue(2, 0, ring)
    d.go(2)
    assert d.read(2, 60, 4) == 16                      # capacity: 16 sectors
    ring.offer([struct.pack("<IIQ", 1, 0, 1), b"x" * 512], [1])
    d.write(2, 56, 2, 0)
    deadline = time.monotonic() + 5
    used = []
    while not used and time.monotonic() < deadline:
        used = ring.used()
        time.sleep(0.01)
    assert used == [(0, 1)]
    assert bus.devices[1].path and open(bus.devices[1].path, "rb").read()[512:1024] == b"x" * 512


def test_the_switcher_keeps_the_latch_and_the_window_fields(bus):
    """With the trap fast path the Switcher keeps writes to 0xCF8 and to the
    PCI_CFG window's three fields in the register page (native/switcher.S,
    FastPath.keep_config_writes): the bus reads them back from there."""
    fast = bus.host.fast
    latch = 0x80000000 | 1 << 11                          # slot 1: the console
    n = fast.words[fast.index["SW_PCI_N"]]
    table = [fast.words[fast.index["SW_PCI_TABLE"] + i] for i in range(n)]
    assert table[:3] == [latch | 0x88, latch | 0x8C, latch | 0x90]
    assert n == 9                                          # three functions, three each
    # What the Switcher does for the early console: latch, bar, length, offset...
    fast.pci_latch = latch | 0x94
    fast.set_kept(0, 0)                    # bar 0 (and the padding the guest wrote)
    fast.set_kept(2, 4)                    # length
    fast.set_kept(1, 60 + 8)               # offset: the emergency write
    bus.port_out(0xCFC, 4, ord("Z"))       # ...and the data write exits to Python
    assert bus.out.getvalue() == b"Z"
    bus.port_out(0xCF8, 4, latch | 0x8C)   # Python's own writes land there too
    assert fast.pci_latch == latch | 0x8C and bus.port_in(0xCFC, 4) == 68
    bus.port_out(0xCFC, 4, 0x40)
    assert fast.kept(1) == 0x40


def gather(fast, data: bytes) -> None:
    """What the Switcher does with an emergency write it keeps."""
    words = fast.host.requests.words
    n = words[fast.i_emerg_n]
    words.cast("B")[fast.emerg_at + n:fast.emerg_at + n + len(data)] = data
    words[fast.i_emerg_n] = n + len(data)


def test_the_switcher_gathers_the_early_console_a_line_at_a_time(bus):
    """The console's data dword and emerg_wr's place are published; what the
    Switcher gathered comes out whole, before anything written later, and
    a count past the buffer (the register page is ring-0 state, yet) is cut
    to the buffer."""
    fast = bus.host.fast
    assert fast.words[fast.index["SW_EMERG_LATCH"]] == 0x80000000 | 1 << 11 | 0x94
    assert fast.words[fast.index["SW_EMERG_OFFSET"]] == 60 + 8
    gather(fast, b"early con")
    fast.flush_emergency()
    fast.flush_emergency()                 # nothing twice
    fast.set_kept(0, 0)                    # the window: bar 0, emerg_wr, 4 bytes
    fast.set_kept(1, 60 + 8)
    fast.set_kept(2, 4)
    bus.port_out(0xCF8, 4, 0x80000000 | 1 << 11 | 0x94)
    bus.port_out(0xCFC, 4, ord("\n"))      # the newline, which exits
    assert bus.out.getvalue() == b"early con\n"
    fast.host.requests.words[fast.i_emerg_n] = 0xFFFFFFFF
    fast.flush_emergency()
    assert len(bus.out.getvalue()) == len(b"early con\n") + fast.emerg_max


def test_without_the_fast_path_every_configuration_cycle_exits(tmp_path):
    host = Host(FakeMachine(MEM), fast_traps=False)
    b = PciBus([Console(io.BytesIO())], MEM)
    b.install(host)
    try:
        assert host.fast.words[host.fast.index["SW_PCI_N"]] == 0
        assert host.fast.words[host.fast.index["SW_EMERG_LATCH"]] == 0
    finally:
        b.shutdown()


def test_kept_fields_are_checked_like_any_the_guest_writes(bus):
    """The guest can write the register page's copies directly: what they
    say is checked when the window is used, as a configuration write's is."""
    fast = bus.host.fast
    fast.pci_latch = 0x80000000 | 1 << 11 | 0x94
    fast.set_kept(0, 5)                    # bar 5: there is none
    fast.set_kept(2, 4)
    fast.set_kept(1, 68)
    assert bus.port_out(0xCFC, 4, ord("Z")) is False     # refused: the guest's #GP
    fast.set_kept(0, 0)
    fast.set_kept(1, 0xFFFFFFF0)           # past BAR0's registers
    assert bus.port_out(0xCFC, 4, ord("Z")) is False
    assert bus.out.getvalue() == b""
