"""The page-fault fast path: #PF reflected by the Switcher, not by Python.

A ring-3 page fault is the commonest trap a guest takes, and all the Host
does with it is copy cr2 into lguest_data and push the frame the CPU would
have pushed (Traps.deliver). native/switcher.S (fast_page_fault) does the
same without leaving the VM, given a few facts it reads from the GDT page
(which the guest sees read-only):

- the guest's #PF handler and whether its gate is an interrupt gate;
- its ring-1 stack (SET_STACK), for faults from ring 3;
- where lguest_data's cr2 and irq_enabled are, through a two-page window
  the Machine maps onto lguest_data (Machine.map_lguest_data).

``FastPath.update`` rewrites them whenever one of those changes (INIT,
LOAD_IDT_ENTRY 14, SET_STACK) and turns the path off when any is missing;
``--no-fast-traps`` keeps it off, so every #PF goes through Python, which
stays the reference. A guest stack the Switcher cannot write makes it give
up and exit as before, so Python decides what happens (usually: kill).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import descriptors as D

if TYPE_CHECKING:
    from .core import Host

PF_VECTOR = 14


class FastPath:
    FIELDS = ("SW_FAST_ON", "SW_FAST_HANDLER", "SW_FAST_IGATE", "SW_FAST_SS1",
              "SW_FAST_ESP1", "SW_FAST_CR2_AT", "SW_FAST_IRQ_AT")

    def __init__(self, host: "Host", enabled: bool = True) -> None:
        self.host = host
        self.enabled = enabled
        image = host.image
        base = image.SW_FAST
        self.words = host.machine.fast_params            # u32 view at SW_FAST
        self.index = {name: (getattr(image, name) - base) // 4 for name in self.FIELDS}
        regpage = image.SW_REGPAGE
        self.i_count = (image.SW_FAST_COUNT - regpage) // 4
        self.i_busy = (image.SW_FAST_BUSY - regpage) // 4
        self.window: int | None = None                   # lguest_data's address in it
        self._set("SW_FAST_ON", 0)

    def _set(self, name: str, value: int) -> None:
        self.words[self.index[name]] = value & 0xFFFFFFFF

    @property
    def count(self) -> int:
        """Page faults the Switcher reflected by itself."""
        return self.host.requests.words[self.i_count]

    def attach(self) -> None:
        """At LGUEST_INIT: map lguest_data into the Switcher's window."""
        data = self.host.lguest_data
        self.window = self.host.machine.map_lguest_data(data.gpa, data.layout.size)
        self._set("SW_FAST_CR2_AT", self.window + data.layout.cr2)
        self._set("SW_FAST_IRQ_AT", self.window + data.layout.irq_enabled)
        self.update()

    def update(self) -> None:
        host = self.host
        low, high = host.traps.guest_idt[PF_VECTOR]
        on = self.enabled and self.window is not None and D.gate_present(high)
        if on:
            self._set("SW_FAST_HANDLER", D.gate_handler(low, high))
            self._set("SW_FAST_IGATE", int(D.gate_type(high) == D.GATE_INTERRUPT))
            self._set("SW_FAST_SS1", host.ss1)
            self._set("SW_FAST_ESP1", host.esp1 if host.ss1 else 0)
        self._set("SW_FAST_ON", int(on))
