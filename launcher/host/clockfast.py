"""The clock in the VM: SET_CLOCKEVENT, HALT and the tick without an exit.

An idle guest's life is a loop: the clock event fires, IRQ 0 runs the
guest's tick, the tick re-arms the clock (SET_CLOCKEVENT), and the idle
loop HALTs. Through Python that is three exits per tick. When the Machine
put a local APIC into KVM (``machine.apic_in_kernel``: the default,
``--no-fast-clock`` turns it off), native/switcher.S does
all three itself:

- SET_CLOCKEVENT(ns) writes the APIC timer's count (one count = 1 ns);
- the timer's interrupt (SW_TIMER_VECTOR) is delivered as IRQ 0, the same
  frame and the same checks as ``Interrupts.deliver``, including the
  wall clock it writes into ``lguest_data.time``;
- HALT is a real `hlt`, so KVM parks the vCPU until the next interrupt;
- SEND_INTERRUPTS, when the IRQ it asks for is the held-back IRQ 0,
  delivers it without an exit.

Python owns the policy: this module publishes what the Switcher may act on
(the guest's gate 32, where lguest_data's fields are, the iret window, the
async ring's cursor, Python's own pending IRQs) and takes back what the
Switcher could not finish (an IRQ 0 it held back, a HALT a kick ended).
Every case that is not the plain one leaves for Python: queued async
hypercalls, an IRQ Python could deliver, a masked IRQ 0, the iret window.
Python's own hypercall handlers stay the reference path (they ask the
Switcher, through the request area, to arm the timer or to halt), and with
the clock off everything is as in timer.py and interrupts.py.

Kicks change too: with the LAPIC in KVM, KVM_INTERRUPT is not available,
so a kick is an MSI (kvm.Vcpu.kick_by_msi), which also wakes a `hlt`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .timer import HELD_BACK_KICK_NS

if TYPE_CHECKING:
    from .core import Host

TICK_VECTOR = 32                 # the guest's IRQ 0
TSC_MULT_SHIFT = 24              # SW_TSC_MULT is ns per TSC tick << 24
NO_IRET = 0xFFFFFFFF             # SW_NOIRQ_IRET when the guest has none


class ClockInVm:
    PARAMS = ("SW_CLK_ON", "SW_TICK_HANDLER", "SW_TICK_IGATE", "SW_IRQPEND_AT",
              "SW_NOIRQ_START", "SW_NOIRQ_END", "SW_NOIRQ_IRET", "SW_TIME_AT",
              "SW_TSC_MULT", "SW_NS_BASE", "SW_SENDINT_CALL")
    STATE = ("SW_CLK_PENDING", "SW_HALTED", "SW_FAST_CLOCKEVENTS", "SW_FAST_HALTS",
             "SW_FAST_TICKS", "SW_FAST_SENDS")

    def __init__(self, host: "Host") -> None:
        self.host = host
        machine = host.machine
        self.on = bool(getattr(machine, "apic_in_kernel", False))
        image = host.image
        self.params = machine.fast_params
        self.p = {n: (getattr(image, n) - image.SW_FAST) // 4 for n in self.PARAMS}
        self.state = host.requests.words
        self.s = {n: (getattr(image, n) - image.SW_REGPAGE) // 4 for n in self.STATE}
        self.i_halted = self.s["SW_HALTED"]
        self.i_clk_pending = self.s["SW_CLK_PENDING"]
        self._set("SW_CLK_ON", 0)

    def _set(self, name: str, value: int) -> None:
        self.params[self.p[name]] = value & 0xFFFFFFFF

    # -- at LGUEST_INIT and when the guest changes what we publish ---------------
    def attach(self) -> None:
        """lguest_data is known and mapped in the Switcher's window
        (FastPath.attach ran first and published what every in-VM hypercall
        needs): publish the clock's own fields, and turn it on."""
        if not self.on:
            return
        host = self.host
        data, window = host.lguest_data, host.fast.window
        layout = data.layout
        # Linux 2.6.25-2.6.30 have no irq_pending: the Switcher's store
        # goes to a word of its own instead (Python's kicks find the IRQ).
        self._set("SW_IRQPEND_AT", host.image.SW_IRQPEND_SINK if layout.irq_pending is None
                  else window + layout.irq_pending)
        self._set("SW_TIME_AT", window + layout.time)
        start, end = host.noirq
        self._set("SW_NOIRQ_START", start)
        self._set("SW_NOIRQ_END", end)
        self._set("SW_NOIRQ_IRET", host.noirq_iret if host.noirq_iret >= 0 else NO_IRET)
        khz = host.machine.tsc_khz
        self._set("SW_TSC_MULT", (1_000_000 << TSC_MULT_SHIFT) // khz if khz else 0)
        # SEND_INTERRUPTS with IRQ 0 held in the VM delivers it there; the
        # call's number is the generation's (2.6.31 on; 0: it has none).
        self._set("SW_SENDINT_CALL", host.generation.call_number("SEND_INTERRUPTS") or 0)
        self.update_tick_gate()
        self._set("SW_CLK_ON", 1)

    def update_tick_gate(self) -> None:
        """LOAD_IDT_ENTRY 32: the handler the Switcher enters for IRQ 0."""
        handler, igate = self.host.traps.switcher_gate(TICK_VECTOR) or (0, False)
        self._set("SW_TICK_HANDLER", handler)          # 0: the tick exits to Python
        self._set("SW_TICK_IGATE", int(igate))

    def rebase(self, ns: int) -> None:
        """Host.set_wallclock wrote ``ns``: the Switcher's clock restarts
        from it at the coming resume (it reads the TSC then)."""
        i = self.p["SW_NS_BASE"]
        self.params[i] = ns & 0xFFFFFFFF
        self.params[i + 1] = ns >> 32
        self.host.requests.stamp()

    # -- every exit ------------------------------------------------------------------
    def take(self) -> None:
        """What the Switcher left for Python: a HALT an interrupt ended but
        the Switcher did not finish, an IRQ 0 it could not deliver."""
        state = self.state
        if state[self.i_halted]:
            state[self.i_halted] = 0
            self.host.interrupts.halted = True
        if state[self.i_clk_pending]:
            state[self.i_clk_pending] = 0
            self.host.interrupts.merge(1)

    def hand_back(self) -> None:
        """After Python's delivery step: an IRQ 0 it could not deliver (the
        guest's interrupts are off, or it is in its iret window) goes back
        to the Switcher, which looks again when the APIC timer fires in
        HELD_BACK_KICK_NS, as Python's kicks would, but without an exit each
        time. Kept by Python: a masked IRQ 0 and one with no gate yet (they
        wait for an exit that changes that), and anything a sooner
        SET_CLOCKEVENT of this exit asks for."""
        interrupts = self.host.interrupts
        if not interrupts.pending & 1 or not self.params[self.p["SW_TICK_HANDLER"]]:
            return
        if self.host.lguest_data.get("blocked_interrupts") & 1:
            return
        with interrupts.cond:
            interrupts.pending &= ~1
            if not interrupts.pending:
                interrupts.held_back = False
        self.state[self.i_clk_pending] = 1
        self.host.requests.arm_timer_before(HELD_BACK_KICK_NS)

    def halt_if_idle(self) -> None:
        """After Python's delivery step: a HALT with nothing to deliver goes
        on in the Switcher (Python's pending IRQs and the ring's cursor are
        published for it by FastPath.publish_state)."""
        interrupts = self.host.interrupts
        if interrupts.halted:
            interrupts.halted = False
            self.host.requests.halt()

    # -- Python's hypercall handlers in this mode -------------------------------------
    def set_clockevent(self, delta_ns: int) -> None:
        self.host.requests.arm_timer(delta_ns)

    def counts(self) -> dict[str, int]:
        """What the Switcher did without an exit, for --stats."""
        s = self.state
        return {"SET_CLOCKEVENT": s[self.s["SW_FAST_CLOCKEVENTS"]],
                "HALT": s[self.s["SW_FAST_HALTS"]],
                "SEND_INTERRUPTS": s[self.s["SW_FAST_SENDS"]],
                "clock interrupts delivered": s[self.s["SW_FAST_TICKS"]]}
