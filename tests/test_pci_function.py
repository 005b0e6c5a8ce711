"""BAR0 of one virtio-PCI function, without KVM: the bring-up sequence, each
common-config field's rules (a broken rule kills the guest with the field's
name), queues, ISR and interrupts, reset (docs/abi.md §10.4)."""
import io
import time

import pytest

from launcher.errors import GuestFault
from launcher.memory import GuestMemory
from launcher.virtio.console import Console
from launcher.virtio.pci_function import VirtioPciFunction
from launcher.virtio.rng import Rng
from virtio_driver import FakeDriver

ACK, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
MEM = 4 << 20
BAR = 0x500000


class Fn:
    """A function with a tiny driver's helpers."""

    def __init__(self, device=None):
        self.memory = GuestMemory(bytearray(MEM))
        self.raised, self.faults = [], []
        self.fn = VirtioPciFunction(device or Rng(), 2, 7, BAR, self.memory,
                                    self.raised.append, self.faults.append)

    def w(self, off, width, value):
        self.fn.write(off, width, value)

    def r(self, off, width):
        return self.fn.read(off, width)

    def negotiate(self, accept=1 << 32):
        self.w(20, 1, ACK)
        self.w(20, 1, ACK | DRIVER)
        for word in (0, 1):
            self.w(8, 4, word)
            self.w(12, 4, (accept >> 32 * word) & 0xFFFFFFFF)
        self.w(20, 1, ACK | DRIVER | FEATURES_OK)
        assert self.r(20, 1) == ACK | DRIVER | FEATURES_OK

    def queue(self, index=0, base=0x10000, num=16):
        d = FakeDriver(self.memory, base, num=num, data=0x200000)
        self.w(22, 2, index)
        self.w(24, 2, num)
        for off, addr in ((32, d.vring.desc), (40, d.vring.avail), (48, d.vring.used)):
            self.w(off, 4, addr)
        self.w(28, 2, 1)
        return d

    def live(self):
        self.negotiate()
        d = self.queue()
        self.w(20, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
        return d


@pytest.fixture
def f():
    fn = Fn()
    yield fn
    fn.fn.stop()


def test_features_offered_in_two_words(f):
    f.w(20, 1, ACK)
    f.w(20, 1, ACK | DRIVER)
    f.w(0, 4, 1)
    assert f.r(4, 4) == 1                    # VERSION_1 is bit 32
    f.w(0, 4, 0)
    assert f.r(4, 4) == 0                    # rng offers nothing else
    f.w(0, 4, 5)
    assert f.r(4, 4) == 0                    # no such word
    assert f.r(18, 2) == 1                   # num_queues


def test_a_whole_bring_up_serves_the_queue_and_interrupts(f):
    d = f.live()
    assert f.fn.runner is not None
    d.offer([], [32])
    f.w(56, 2, 0)                            # notify queue 0
    deadline = time.monotonic() + 5
    while not f.raised and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f.raised == [7] and d.used() == [(0, 32)]
    assert f.r(58, 1) == 1 and f.r(58, 1) == 0      # ISR: read clears it


def test_reset_stops_the_device_and_clears_registers(f):
    f.live()
    f.w(20, 1, 0)
    assert f.fn.runner is None and f.r(20, 1) == 0
    f.w(20, 1, ACK)
    f.w(20, 1, ACK | DRIVER)
    assert f.r(12, 4) == 0 and f.r(24, 2) == 256 and f.r(28, 2) == 0


def test_unknown_queue_shows_size_zero(f):
    f.w(22, 2, 3)
    assert f.r(24, 2) == 0 and f.r(28, 2) == 0


def test_the_notify_register_and_early_kicks(f):
    f.negotiate()
    f.queue()
    f.w(56, 2, 0)                            # before DRIVER_OK: nothing runs yet
    with pytest.raises(GuestFault, match="notify register before setting DRIVER_OK"):
        f.r(56, 2)


def test_console_emergency_write_works_before_the_driver():
    out = io.BytesIO()
    fn = Fn(Console(out))
    assert fn.fn.features & (1 << 2)         # EMERG_WRITE
    fn.w(60 + 8, 4, ord("!"))
    assert out.getvalue() == b"!"
    with pytest.raises(GuestFault, match="device config at offset 0"):
        fn.w(60, 4, 1)


def test_failed_status_stops_the_device(f, capsys):
    f.live()
    f.w(20, 1, 0x80 | ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert f.fn.runner is None and "rng driver failed" in capsys.readouterr().err


def bad(f, steps):
    with pytest.raises(GuestFault) as info:
        for step in steps:
            step(f)
    return str(info.value)


W = Fn.w
CASES = {
    # access width and read-only fields
    "wide status": ([lambda f: f.w(20, 2, 1)], "2-byte write of device_status"),
    "inside a field": ([lambda f: f.r(5, 1)], "offset 5"),
    "num_queues": ([lambda f: f.w(18, 2, 4)], "read-only num_queues"),
    "config_generation": ([lambda f: f.w(21, 1, 1)], "read-only config_generation"),
    "queue_notify_off": ([lambda f: f.w(30, 2, 1)], "read-only queue_notify_off"),
    "isr write": ([lambda f: f.w(58, 1, 1)], "read-only isr"),
    "padding": ([lambda f: f.r(59, 1)], "padding"),
    "msix_config read": ([lambda f: f.r(16, 2)], "msix_config"),
    "msix_config write": ([lambda f: f.w(16, 2, 0)], "msix_config"),
    "queue msix": ([lambda f: f.w(26, 2, 0)], "queue_msix_vector"),
    # features
    "feature read early": ([lambda f: f.r(4, 4)], "read device_feature before setting DRIVER"),
    "feature write early": ([lambda f: f.w(12, 4, 0)], "guest_feature before setting DRIVER"),
    "device_feature write": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, 3),
                              lambda f: f.w(4, 4, 1)], "read-only device_feature"),
    "select 2": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, 3),
                  lambda f: f.w(8, 4, 2)], "feature word 2"),
    "over-accept": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, 3),
                     lambda f: f.w(12, 4, 1 << 5)], "not offered"),
    "features after FEATURES_OK": ([lambda f: f.negotiate(), lambda f: f.w(12, 4, 0)],
                                   "guest_feature after FEATURES_OK"),
    # status
    "skipping DRIVER": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, ACK | FEATURES_OK)],
                        "status transition 0x1 -> 0x9"),
    "two bits at once": ([lambda f: f.w(20, 1, ACK | DRIVER)], "status transition 0x0 -> 0x3"),
    "clearing a bit": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, 3),
                        lambda f: f.w(20, 1, 2)], "cleared device status"),
    "same status again": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, ACK)],
                          "status transition 0x1 -> 0x1"),
    "no re-read": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, 3),
                    lambda f: f.w(20, 1, 11), lambda f: f.w(20, 1, 15)],
                   "DRIVER_OK without reading FEATURES_OK"),
    "queue setup before re-read": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, 3),
                                    lambda f: f.w(20, 1, 11), lambda f: f.w(32, 4, 0x10000)],
                                   "queue_desc_lo without reading FEATURES_OK"),
    "DRIVER_OK without queues": ([lambda f: f.negotiate(), lambda f: f.w(20, 1, 15)],
                                 "queue 0 not enabled"),
    # queues
    "address before FEATURES_OK": ([lambda f: f.w(20, 1, ACK), lambda f: f.w(20, 1, 3),
                                    lambda f: f.w(32, 4, 0x10000)],
                                   "queue_desc_lo before setting FEATURES_OK"),
    "size not a power of two": ([lambda f: f.w(24, 2, 100)], "queue_size 100"),
    "size zero": ([lambda f: f.w(24, 2, 0)], "queue_size 0"),
    "no such queue": ([lambda f: f.w(22, 2, 2), lambda f: f.w(24, 2, 16)],
                      "queue_select 2, which names no queue"),
    "enable 0": ([lambda f: f.negotiate(), lambda f: f.w(28, 2, 0)], "queue_enable 0"),
    "enable early": ([lambda f: f.w(28, 2, 1)], "enabled a queue before setting FEATURES_OK"),
    "size on a live queue": ([lambda f: f.negotiate(), lambda f: f.queue(),
                              lambda f: f.w(24, 2, 8)], "queue_size of live queue 0"),
    "address on a live queue": ([lambda f: f.negotiate(), lambda f: f.queue(),
                                 lambda f: f.w(40, 4, 0)], "queue_avail_lo of live queue 0"),
    "enable after DRIVER_OK": ([lambda f: f.live(), lambda f: f.w(28, 2, 1)],
                               "after DRIVER_OK"),
    "above 4 GiB": ([lambda f: f.negotiate(), lambda f: f.w(36, 4, 1),
                     lambda f: f.w(28, 2, 1)], "above 4 GiB"),
    "misaligned descriptors": ([lambda f: f.negotiate(), lambda f: f.w(32, 4, 0x10008),
                                lambda f: f.w(40, 4, 0x11000), lambda f: f.w(48, 4, 0x12000),
                                lambda f: f.w(28, 2, 1)], "16-byte aligned"),
    "ring outside RAM": ([lambda f: f.negotiate(), lambda f: f.w(32, 4, MEM - 16),
                          lambda f: f.w(40, 4, 0x11000), lambda f: f.w(48, 4, 0x12000),
                          lambda f: f.w(28, 2, 1)], "does not fit in guest memory"),
    "dirty used flags": ([lambda f: f.negotiate(), lambda f: f.memory.set_u16(0x12000, 1),
                          lambda f: f.w(32, 4, 0x10000), lambda f: f.w(40, 4, 0x11000),
                          lambda f: f.w(48, 4, 0x12000), lambda f: f.w(28, 2, 1)],
                         "used.flags 0x1"),
    "notify a missing queue": ([lambda f: f.w(56, 2, 1)], "notified queue 1"),
    # device config
    "config read early": ([lambda f: f.r(60, 4)], "past its 0 bytes"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_driver_is_killed_naming_the_field(f, case):
    steps, reason = CASES[case]
    message = bad(f, steps)
    assert reason in message and "rng driver (PCI slot 2)" in message


def test_device_config_rules():
    out = io.BytesIO()
    fn = Fn(Console(out))
    with pytest.raises(GuestFault, match="read device config before setting DRIVER"):
        fn.r(60, 2)
    fn.w(20, 1, ACK)
    fn.w(20, 1, ACK | DRIVER)
    assert fn.r(60, 4) == 0 and fn.r(68, 4) == 0
    with pytest.raises(GuestFault, match="past its 12 bytes"):
        fn.r(70, 4)
