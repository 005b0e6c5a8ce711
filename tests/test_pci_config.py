"""PCI configuration space of one function, without a bus or KVM: the
header, the capability chain, BAR sizing, what may be written, and the
PCI_CFG window into BAR0 (docs/abi.md §10.3)."""
import struct

import pytest

from launcher.errors import GuestFault
from launcher.virtio.pci_config import (CAP_COMMON, CAP_DEVICE, CAP_ISR, CAP_NOTIFY,
                                        CAP_PCI_CFG, PCI_CFG_BAR, PCI_CFG_DATA,
                                        PCI_CFG_LENGTH, PCI_CFG_OFFSET, ConfigSpace, bar_size)

BAR = 0x04200000


class FakeBar0:
    """Registers that remember what the window did."""
    mmio_size = 72

    def __init__(self):
        self.log = []

    def read(self, offset, width):
        self.log.append(("read", offset, width))
        return 0xA5

    def write(self, offset, width, value):
        self.log.append(("write", offset, width, value))


def space(device_type=4, config_len=0, irq=3):
    bar0 = FakeBar0()
    bar0.mmio_size = 60 + config_len
    return ConfigSpace.virtio(device_type, irq, BAR, config_len, bar0), bar0


def caps(cfg):
    """Walk the capability list as the guest's virtio_pci does."""
    out, at = [], cfg.read(0x34, 1)
    while at:
        vndr, nxt, length, kind, bar = (cfg.read(at + i, 1) for i in range(5))
        offset, size = cfg.read(at + 8, 4), cfg.read(at + 12, 4)
        out.append((at, vndr, length, kind, bar, offset, size))
        at = nxt
        assert len(out) < 10, "the chain loops"
    return out


@pytest.mark.parametrize("dtype,device,klass", [(3, 0x1043, 0x0700), (1, 0x1041, 0x0200),
                                                (2, 0x1042, 0x0180), (4, 0x1044, 0xFF00)])
def test_header(dtype, device, klass):
    cfg, _ = space(dtype, irq=5)
    assert cfg.read(0, 4) == device << 16 | 0x1AF4
    assert cfg.read(0x06, 2) == 0x0010                  # capability list present
    assert cfg.read(0x08, 1) == 1                       # revision 1: modern only
    assert cfg.read(0x0A, 2) == klass
    assert cfg.read(0x2E, 2) == 0x0040
    assert cfg.read(0x3C, 1) == 5 and cfg.read(0x3D, 1) == 0
    assert cfg.bar_address == BAR


def test_capability_chain_with_device_config():
    cfg, _ = space(3, config_len=12)
    assert caps(cfg) == [
        (CAP_COMMON, 9, 16, 1, 0, 0, 56),
        (CAP_NOTIFY, 9, 20, 2, 0, 56, 2),
        (CAP_ISR, 9, 16, 3, 0, 58, 1),
        (CAP_PCI_CFG, 9, 20, 5, 0, 0, 0),
        (CAP_DEVICE, 9, 16, 4, 0, 60, 12)]
    assert cfg.read(CAP_NOTIFY + 16, 4) == 0            # one notify address for all queues


def test_capability_chain_without_device_config():
    cfg, _ = space(4, config_len=0)
    assert [c[3] for c in caps(cfg)] == [1, 2, 3, 5]


def test_host_bridge_is_read_only_and_vendorless():
    cfg = ConfigSpace.host_bridge()
    assert cfg.read(0, 4) == 0 and cfg.read(0x0A, 2) == 0x0600
    assert not cfg.write(0x10, 4, 0xFFFFFFFF) and not cfg.write(0x04, 2, 7)


@pytest.mark.parametrize("config_len,size", [(0, 64), (4, 64), (10, 128), (36, 128)])
def test_bar_sizing(config_len, size):
    cfg, _ = space(2, config_len)
    assert bar_size(60 + config_len) == size and cfg.bar_bytes == size
    assert cfg.write(0x10, 4, 0xFFFFFFFF)
    assert cfg.read(0x10, 4) == (~(size - 1)) & 0xFFFFFFFF   # 32-bit memory BAR of `size`
    assert cfg.write(0x10, 4, BAR)
    assert cfg.read(0x10, 4) == BAR


def test_bar_must_be_aligned_to_its_size():
    with pytest.raises(ValueError, match="aligned"):
        ConfigSpace.virtio(4, 1, BAR + 0x20, 0, FakeBar0())


def test_other_bars_and_rom_are_absent():
    """Sizing an unimplemented BAR or the ROM reads back 0: nothing there
    (storing the write, as the original did, made Linux assign a 2 KiB ROM)."""
    cfg, _ = space()
    for off in (0x14, 0x18, 0x1C, 0x20, 0x24, 0x30):
        assert cfg.write(off, 4, 0xFFFFFFFF) and cfg.read(off, 4) == 0


def test_command_status_cacheline_and_refusals():
    cfg, _ = space()
    assert cfg.write(0x04, 2, 0x0007)                   # command: accepted, ignored
    assert cfg.read(0x04, 2) == 0
    assert not cfg.write(0x04, 4, 0x7) and not cfg.write(0x04, 1, 0x7)
    assert cfg.write(0x0C, 4, 0xFFFFFFFF)               # only cacheline + latency stick
    assert cfg.read(0x0C, 4) == 0x0000FFFF
    assert cfg.write(0x0D, 1, 0x40) and cfg.read(0x0D, 1) == 0x40
    for off in (0x00, 0x08, 0x2C, 0x34, 0x3C, CAP_COMMON, CAP_NOTIFY + 8, CAP_PCI_CFG):
        before = cfg.read(off, 4)
        assert not cfg.write(off, 4, 0x12345678), hex(off)
        assert cfg.read(off, 4) == before


def test_pci_cfg_window_reads_and_writes_bar0():
    cfg, bar0 = space(3, config_len=12)
    assert cfg.write(PCI_CFG_BAR, 1, 0)
    assert cfg.write(PCI_CFG_LENGTH, 4, 4)
    assert cfg.write(PCI_CFG_OFFSET, 4, 68)              # emerg_wr
    assert cfg.write(PCI_CFG_DATA, 4, ord("x"))
    assert bar0.log == [("write", 68, 4, ord("x"))]
    assert cfg.write(PCI_CFG_LENGTH, 4, 1) and cfg.write(PCI_CFG_OFFSET, 4, 20)
    assert cfg.read(PCI_CFG_DATA, 4) == 0xA5 and bar0.log[-1] == ("read", 20, 1)
    assert cfg.write(PCI_CFG_DATA, 4, 0x1FF)             # the window's length masks it
    assert bar0.log[-1] == ("write", 20, 1, 0xFF)


@pytest.mark.parametrize("bar,offset,length", [(1, 0, 4), (0, 2, 4), (0, 0, 3),
                                               (0, 72, 1), (0, 70, 4)])
def test_a_bad_window_refuses_writes_and_kills_on_read(bar, offset, length):
    cfg, bar0 = space(3, config_len=12)
    cfg.write(PCI_CFG_BAR, 1, bar)
    cfg.write(PCI_CFG_OFFSET, 4, offset)
    cfg.write(PCI_CFG_LENGTH, 4, length)
    assert not cfg.write(PCI_CFG_DATA, 4, 1)
    with pytest.raises(GuestFault, match="PCI_CFG window"):
        cfg.read(PCI_CFG_DATA, 4)
    assert bar0.log == []


def test_subword_access_reads_the_right_bytes():
    cfg, _ = space(1)
    raw = bytes(cfg.data)
    for off in range(0, PCI_CFG_DATA):                  # (the window itself needs setting up)
        assert cfg.read(off, 1) == raw[off]
    assert cfg.read(2, 2) == struct.unpack_from("<H", raw, 2)[0]
