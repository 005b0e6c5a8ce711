"""Virtual interrupts (docs/abi.md §6.5).

The guest's interrupt flag is virtual: ``lguest_data.irq_enabled`` holds
0x200 or 0, and ``blocked_interrupts`` masks single IRQs. The real IF is
always on while the guest runs. So interrupts are *delivered* by the Host:
before every resume (and when waking from HALT) ``deliver`` picks the lowest
pending, unblocked IRQ and, if the guest has interrupts on, rewrites the
frame to enter the guest's handler as the CPU would.

Devices and the clock event raise IRQs from other threads through
``raise_irq``: it sets the bit, wakes a halted vCPU, and kicks a running one
so the delivery step runs at the next instruction boundary.

While an IRQ is held back by ``irq_enabled == 0`` the Host must also force
exits itself: G1/G2 guests re-enable interrupts with a plain store that
never asks for SEND_INTERRUPTS (docs/abi.md §12.15). ``held_back`` tells
the timer thread to keep kicking until delivery succeeds.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..machine import X86_EFLAGS_IF
from ..switcher import EIP

if TYPE_CHECKING:
    from .core import Host

LGUEST_IRQS = 32


class Interrupts:
    def __init__(self, host: "Host") -> None:
        self.host = host
        self.cond = threading.Condition(threading.Lock())
        self.pending = 0            # bitmap of raised IRQs
        self.halted = False
        self.held_back = False      # an IRQ waits for the guest's irq_enabled
        self.stopping = False
        self.on_held_back = lambda: None   # the timer thread's wake-up

    # -- from any thread ---------------------------------------------------------
    def raise_irq(self, irq: int) -> None:
        if not 0 <= irq < LGUEST_IRQS:
            raise ValueError(f"IRQ {irq} is out of range")
        with self.cond:
            self.pending |= 1 << irq
            self.cond.notify_all()
        self.host.machine.vcpu.kick()

    def merge(self, bits: int) -> None:
        """From the vCPU thread: IRQs raised inside the VM (the clock in
        the VM's held-back IRQ 0), already there to be delivered."""
        with self.cond:
            self.pending |= bits

    def stop(self) -> None:
        """End a HALT wait because the run is ending (a kill from outside)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.host.machine.vcpu.kick()

    # -- the vCPU thread -----------------------------------------------------------
    def candidates(self) -> int:
        data = self.host.lguest_data
        if data is None:
            return 0
        return self.pending & ~data.get("blocked_interrupts")

    def halt(self) -> None:
        """HALT: sleep until an unblocked IRQ is pending (irq_enabled does not
        matter for waking), then let the delivery step run."""
        self.halted = True
        with self.cond:
            while not self.stopping and not self.candidates():
                self.cond.wait()

    def deliver(self) -> None:
        host = self.host
        data = host.lguest_data
        if data is None or not self.pending:
            return
        cand = self.pending & ~data.get("blocked_interrupts")
        if not cand:
            # Everything pending is masked now: stop asking the guest for
            # SEND_INTERRUPTS, or it makes one at every irq_enable (G3 does)
            # until the IRQ is unmasked, an exit each time for nothing.
            if self.held_back:
                self.held_back = False
                data.set_irq_pending(0)
            return
        irq = (cand & -cand).bit_length() - 1
        eip = host.regs[EIP]
        start, end = host.noirq
        if start <= eip < end:
            return                  # inside the guest's iret window: next time
        if self.halted:
            data.set("irq_enabled", X86_EFLAGS_IF)    # HALT is "sti; hlt"
            self.halted = False
        elif not data.get("irq_enabled") & X86_EFLAGS_IF:
            data.set_irq_pending(X86_EFLAGS_IF)
            if not self.held_back:
                self.held_back = True
                self.on_held_back()
            return
        self.held_back = False
        vector = 32 + irq
        if host.traps.has_handler(vector):
            with self.cond:
                self.pending &= ~(1 << irq)
                cand &= ~(1 << irq)
            if eip == host.noirq_iret:
                host.traps.deliver_at_iret(vector)
            else:
                host.traps.deliver(vector, False)
        host.set_wallclock(data)
        if not cand:
            data.set_irq_pending(0)

