"""Counting, timing and tracing exits: ``--stats`` and ``--trace FILE``.

An ``ExitRecorder`` wraps the Host's trap handler only when asked for, so an
untraced run pays nothing. ``--trace`` writes Chrome trace-event JSON (one
complete event per exit, in the "JSON array" form), which Perfetto and
chrome://tracing open directly.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable, TextIO

from ..machine import KICK_VECTOR, LGUEST_TRAP_ENTRY
from ..switcher import EAX, EIP, ERRCODE, TRAPNUM, load_image
from .hypercalls import name_of

if TYPE_CHECKING:
    from .core import Host


def exit_kind(trapnum: int, eax: int, calls: dict[int, str] | None = None) -> str:
    """A name for --stats: the hypercall by the guest generation's own
    numbering (``calls``, generations.py) when given."""
    if trapnum == LGUEST_TRAP_ENTRY:
        if calls is not None and eax in calls:
            return f"LHCALL_{calls[eax]}"
        return name_of(eax)
    if trapnum == KICK_VECTOR:
        return "kick"
    if trapnum == load_image().SW_TIMER_VECTOR:
        return "clock (APIC timer)"
    return f"trap {trapnum}"


class ExitRecorder:
    def __init__(self, trace: TextIO | None = None) -> None:
        self.counts: Counter[str] = Counter()
        # Not exits: what the Switcher did alone (host/fastpath.py, clockfast.py).
        self.in_vm: Counter[str] = Counter()
        self.total_ns: Counter[str] = Counter()
        self.trace = trace
        self.start_ns = time.monotonic_ns()
        self._first = True
        if trace is not None:
            trace.write("[\n")

    def wrap(self, host: "Host", handle: Callable[[], None]) -> Callable[[], None]:
        """Trips through the Switcher: hypercalls, traps, kicks."""
        regs = host.regs
        calls = host.generation.calls
        arg_slots = host.generation.arg_registers

        def recorded() -> None:
            trapnum, eax = regs[TRAPNUM], regs[EAX]
            args = None
            if self.trace is not None:
                args = ({"args": [regs[i] for i in arg_slots]}
                        if trapnum == LGUEST_TRAP_ENTRY
                        else {"vector": trapnum, "errcode": regs[ERRCODE]})
                args["eip"] = regs[EIP]
                if trapnum == 14:
                    args["cr2"] = host.requests.cr2
            self._measure(exit_kind(trapnum, eax, calls), args, handle)
        return recorded

    def wrap_mmio(self, host: "Host", handle: Callable[[], None]) -> Callable[[], None]:
        """MMIO exits (G3 device registers), named by the register touched."""
        vcpu = host.machine.vcpu

        def recorded() -> None:
            addr, width, value = vcpu.mmio_access()
            kind = host.mmio_kind(addr) if host.mmio_kind is not None else "mmio"
            args = ({"addr": addr, "len": width, "value": value}
                    if self.trace is not None else None)
            self._measure(kind, args, handle)
        return recorded

    def _measure(self, kind: str, args: dict | None, handle: Callable[[], None]) -> None:
        t0 = time.monotonic_ns()
        result = "ok"
        try:
            handle()
        except Exception as exc:          # recorded, then handled by the loop
            result = str(exc)
            raise
        finally:
            t1 = time.monotonic_ns()
            self.counts[kind] += 1
            self.total_ns[kind] += t1 - t0
            if args is not None:
                args["result"] = result
                self._event(kind, t0, t1, args)

    def _event(self, name: str, t0: int, t1: int, args: dict) -> None:
        event = {"name": name, "ph": "X", "pid": 1, "tid": 1,
                 "ts": (t0 - self.start_ns) / 1000, "dur": (t1 - t0) / 1000, "args": args}
        self.trace.write(("" if self._first else ",\n") + json.dumps(event))
        self._first = False

    def close(self) -> None:
        if self.trace is not None:
            self.trace.write("\n]\n")
            self.trace.close()
            self.trace = None

    def table(self) -> str:
        total = sum(self.counts.values())
        total_ms = sum(self.total_ns.values()) / 1e6
        lines = [f"{'exit':<26}{'count':>10}{'total ms':>12}{'mean us':>10}"]
        for kind, count in self.counts.most_common():
            ns = self.total_ns[kind]
            lines.append(f"{kind:<26}{count:>10}{ns / 1e6:>12.1f}{ns / count / 1e3:>10.1f}")
        lines.append(f"{'total':<26}{total:>10}{total_ms:>12.1f}")
        done = [f"{count} {kind}" for kind, count in self.in_vm.items() if count]
        if done:
            lines.append("in the VM, without an exit: " + ", ".join(done))
        return "\n".join(lines)
