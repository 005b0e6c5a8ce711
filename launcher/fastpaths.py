"""The fast paths, and the switch that turns them all off.

Python is the reference Host: every fast path below carries out only what
the Python path would do, can be turned off on its own, and falls back to
Python whenever a case is not the plain one. They are:

- ``fast_traps`` (``--no-fast-traps``): the Switcher reflects a guest's
  page fault itself (host/fastpath.py);
- ``fast_clock`` (``--no-fast-clock``): a local APIC in KVM, and the
  Switcher takes SET_CLOCKEVENT, HALT and the clock interrupt
  (host/clockfast.py); ``LGUEST_FAST_CLOCK=off`` makes it default to off
  alone;
- ``ioeventfd`` (``--no-ioeventfd``): G3 queue kicks signal the device's
  eventfd inside KVM (virtio/pci_bus.py).

``LGUEST_FAST_PATHS=off`` in the environment makes all of them default to
off (the command line, GuestConfig, Machine and Host alike), so a whole test
run can exercise the reference path; CI does one such run.
"""
from __future__ import annotations

import os

ENV = "LGUEST_FAST_PATHS"


def fast_paths_default() -> bool:
    """Are the fast paths on unless asked otherwise?"""
    return os.environ.get(ENV, "on").strip().lower() not in ("off", "0", "no", "false")


CLOCK_ENV = "LGUEST_FAST_CLOCK"


def fast_clock_default() -> bool:
    """The clock in the VM: on with the other fast paths, unless
    LGUEST_FAST_CLOCK=off."""
    return fast_paths_default() and os.environ.get(CLOCK_ENV, "on").strip().lower() not in (
        "off", "0", "no", "false")


def choose(wanted: bool | None) -> bool:
    """An explicit choice, or the default."""
    return fast_paths_default() if wanted is None else wanted
