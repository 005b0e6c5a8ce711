"""Time (docs/abi.md §8): the guest's one-shot clock event, and the
periodic kick while an interrupt is held back.

SET_CLOCKEVENT(delta) arms a one-shot timer at now + delta ns on the host's
monotonic clock (so it keeps running while the guest is descheduled); expiry
raises IRQ 0. One thread serves both deadlines; it sleeps on a condition
variable. Re-arming wakes it only when the new deadline comes sooner than
the one it sleeps towards: a later one it finds when it wakes anyway, and a
guest re-arms its clock at nearly every context switch, so the hot path
mostly stores a number.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Host

HELD_BACK_KICK_NS = 2_000_000      # how often to poke a guest holding an IRQ back


class ClockEvent:
    def __init__(self, host: "Host") -> None:
        self.host = host
        self.cond = threading.Condition(threading.Lock())
        self.deadline: int | None = None
        self.wakes_at: int | None = None   # when the thread's sleep ends (None: never)
        self.running = True
        self.expiries = 0
        self.thread = threading.Thread(target=self._loop, name="lguest-timer", daemon=True)
        self.thread.start()

    def set(self, delta_ns: int) -> None:
        with self.cond:
            if not delta_ns:
                self.deadline = None          # the thread's next wake finds it gone
                return
            self.deadline = deadline = time.monotonic_ns() + delta_ns
            if self.wakes_at is None or deadline < self.wakes_at:
                self.cond.notify()

    def wake(self) -> None:
        """An IRQ is being held back: start the periodic kicks."""
        with self.cond:
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()
        self.thread.join()

    def _loop(self) -> None:
        interrupts = self.host.interrupts
        vcpu = self.host.machine.vcpu
        with self.cond:
            while self.running:
                now = time.monotonic_ns()
                if self.deadline is not None and now >= self.deadline:
                    self.deadline = None
                    self.expiries += 1
                    self.cond.release()
                    try:
                        interrupts.raise_irq(0)
                    finally:
                        self.cond.acquire()
                    continue
                waits = []
                if self.deadline is not None:
                    waits.append(self.deadline - now)
                if interrupts.held_back:
                    waits.append(HELD_BACK_KICK_NS)
                timeout = min(waits) / 1e9 if waits else None
                self.wakes_at = now + min(waits) if waits else None
                self.cond.wait(timeout)
                self.wakes_at = None          # awake: set() must not rely on a sleep
                if interrupts.held_back and self.running:
                    vcpu.kick()
