"""launcher/kvm.py without /dev/kvm: the guest-memory regions."""
from __future__ import annotations

import pytest

from launcher.kvm import GuestRegion


def _rss_kib_of(address: int) -> int | None:
    """The resident size of the mapping starting at ``address``, or None if
    there is no such mapping any more."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                inside = int(head.split("-")[0], 16) == address
            elif inside and head == "Rss:":
                return int(line.split()[1])
    return None


def test_close_unmaps_a_region_nothing_else_holds():
    region = GuestRegion(4 << 20)
    region.view[:] = b"\xAA" * region.size
    assert _rss_kib_of(region.address) >= 4096
    region.close()
    assert region.map.closed
    assert _rss_kib_of(region.address) is None
    region.close()                          # twice is harmless


def test_close_frees_the_pages_even_while_a_view_is_held():
    region = GuestRegion(4 << 20)
    region.view[:] = b"\xAA" * region.size
    held = memoryview(region.map)[4096:8192]
    region.close()
    # The mapping stays while ``held`` lives, but its memory is gone: a
    # straggler reads zeros, it cannot keep a rebooted VM's RAM alive.
    assert not region.map.closed
    assert _rss_kib_of(region.address) == 0
    assert bytes(held) == bytes(4096)
    with pytest.raises(ValueError):
        region.view[0]
    held.release()
