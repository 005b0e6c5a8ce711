"""Traps and the IDT (docs/abi.md §6): the guest's IDT, direct traps, and
delivering a trap or interrupt into the guest.

The guest hands its IDT over one gate at a time (LOAD_IDT_ENTRY). We keep
its view in ``guest_idt`` and decide, per vector, what the *real* IDT does:

- a trap gate for a vector below 32 (other than #NM, #GP, #PF and the
  hypercall vector) or for the system-call vector goes into the real IDT
  pointing straight at the guest's handler: the CPU delivers it without
  leaving the VM ("direct traps");
- everything else enters the Switcher, exits to Python, and Python pushes a
  frame onto the guest's stack as the CPU would have (``deliver``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import descriptors as D
from ..errors import GuestFault
from ..machine import (ERRCODE_VECTORS, GUEST_CS, IDT_ENTRIES, LGUEST_TRAP_ENTRY,
                       X86_EFLAGS_IF)
from ..switcher import CS, EFLAGS, EIP, ERRCODE, ESP, SS

if TYPE_CHECKING:
    from .core import Host

SYSCALL_VECTOR = 0x80
IGNORED_VECTORS = frozenset((2, 8, 15, LGUEST_TRAP_ENTRY))
# Vectors the Host must always see: #NM (lazy FPU), #GP (in/out), #PF (cr2).
NEVER_DIRECT = frozenset((7, 13, 14, LGUEST_TRAP_ENTRY))
X86_EFLAGS_TF, X86_EFLAGS_RF, X86_EFLAGS_NT, X86_EFLAGS_VM = 0x100, 0x10000, 0x4000, 0x20000


class Traps:
    def __init__(self, host: "Host") -> None:
        self.host = host
        self.machine = host.machine
        self.guest_idt: list[tuple[int, int]] = [(0, 0)] * IDT_ENTRIES
        self.syscall_vector = SYSCALL_VECTOR
        self.never_direct = NEVER_DIRECT      # the Host adds #UD for G1's vmcall

    # -- LOAD_IDT_ENTRY ----------------------------------------------------
    def load_idt_entry(self, vector: int, low: int, high: int) -> None:
        if vector in IGNORED_VECTORS:
            return
        if vector >= IDT_ENTRIES:
            raise GuestFault(f"LOAD_IDT_ENTRY: vector {vector} is past the IDT")
        if not D.gate_present(high):
            self.guest_idt[vector] = (0, 0)
        else:
            type_ = D.gate_type(high)
            if type_ not in (D.GATE_INTERRUPT, D.GATE_TRAP):
                raise GuestFault(f"LOAD_IDT_ENTRY: vector {vector} has gate type {type_:#x}, "
                                 "not an interrupt or trap gate")
            # The selector is always the guest's kernel CS.
            self.guest_idt[vector] = ((GUEST_CS << 16) | (low & 0xFFFF), high & 0xFFFFEF00)
        self.update_real_gate(vector)

    def is_direct(self, vector: int) -> bool:
        low, high = self.guest_idt[vector]
        if not D.gate_present(high) or D.gate_type(high) != D.GATE_TRAP:
            return False
        return (vector < 32 and vector not in self.never_direct) or vector == self.syscall_vector

    def update_real_gate(self, vector: int) -> None:
        low, high = self.guest_idt[vector]
        if self.is_direct(vector):
            handler = D.gate_handler(low, high)
            self.machine.idt[vector] = D.gate(handler, GUEST_CS, D.GATE_TRAP, D.gate_dpl(high))
        elif vector < 32 or vector == self.syscall_vector:
            # Through the Host, but with the guest's DPL, so a ring-3 `int3`
            # still reaches the guest's handler.
            dpl = D.gate_dpl(high) if D.gate_present(high) else 0
            if vector == LGUEST_TRAP_ENTRY:
                dpl = 1
            self.machine.idt[vector] = self.machine.host_gate(vector, dpl)
        else:
            self.machine.idt[vector] = self.machine.host_gate(vector, 0)

    def set_syscall_vector(self, vector: int) -> None:
        old, self.syscall_vector = self.syscall_vector, vector
        self.update_real_gate(old)
        self.update_real_gate(vector)

    # -- delivery ------------------------------------------------------------
    def has_handler(self, vector: int) -> bool:
        return D.gate_present(self.guest_idt[vector][1])

    def deliver(self, vector: int, has_errcode: bool) -> None:
        """Push a trap frame onto the guest stack and point the guest at its
        handler, exactly as the CPU would have (docs/abi.md §6.4)."""
        host, r = self.host, self.machine.regs
        low, high = self.guest_idt[vector]
        if not D.gate_present(high):
            raise GuestFault(self.unhandled_message(vector))
        self.check_handler(vector, D.gate_handler(low, high))
        if (r[SS] & 3) != 1:
            # From ring 3: switch to the ring-1 stack SET_STACK gave us, and
            # save the old stack on it, as the CPU does on a privilege change.
            ss, sp = host.ss1, host.esp1
            sp = host.push(sp, r[SS])
            sp = host.push(sp, r[ESP])
        else:
            ss, sp = r[SS], r[ESP]
        eflags = r[EFLAGS]
        if not host.guest_irqs_enabled():
            eflags &= ~X86_EFLAGS_IF
        sp = host.push(sp, eflags)
        sp = host.push(sp, r[CS])
        sp = host.push(sp, r[EIP])
        if has_errcode:
            sp = host.push(sp, r[ERRCODE])
        r[SS], r[ESP] = ss, sp
        r[CS], r[EIP] = GUEST_CS, D.gate_handler(low, high)
        r[EFLAGS] &= ~(X86_EFLAGS_TF | X86_EFLAGS_VM | X86_EFLAGS_RF | X86_EFLAGS_NT)
        if D.gate_type(high) == D.GATE_INTERRUPT:
            host.disable_guest_irqs()

    def deliver_at_iret(self, vector: int) -> None:
        """G3's no-interrupt rule: the guest is sitting on its final `iret`
        with a frame (eip, cs, eflags) on the stack. Rather than push another
        frame, enter the handler as if the interrupt came right after that
        iret: the frame already there is the one the handler returns through."""
        r = self.machine.regs
        low, high = self.guest_idt[vector]
        self.check_handler(vector, D.gate_handler(low, high))
        stacked = self.host.memory.u32(self.host.translate(r[ESP] + 8), "iret frame")
        r[EFLAGS] = stacked & ~(X86_EFLAGS_TF | X86_EFLAGS_VM | X86_EFLAGS_RF | X86_EFLAGS_NT)
        r[CS], r[EIP] = GUEST_CS, D.gate_handler(low, high)
        if D.gate_type(high) == D.GATE_INTERRUPT:
            self.host.disable_guest_irqs()

    def switcher_gate(self, vector: int) -> tuple[int, bool] | None:
        """The guest's gate for ``vector`` as the Switcher may use it:
        (handler, is an interrupt gate), or None when there is none or it
        points into the Switcher's region (check_handler refuses that one)."""
        low, high = self.guest_idt[vector]
        handler = D.gate_handler(low, high)
        if not D.gate_present(high) or handler >= self.host.image.SW_BASE:
            return None
        return handler, D.gate_type(high) == D.GATE_INTERRUPT

    def check_handler(self, vector: int, handler: int) -> None:
        """Never enter the Switcher's region: it is the Host's (the fast
        paths leave such a gate to us, host/fastpath.py, clockfast.py)."""
        if handler >= self.host.image.SW_BASE:
            raise GuestFault(f"the guest's gate for vector {vector} points into the "
                             f"Switcher's region ({handler:#x})")

    def reflect(self, vector: int) -> None:
        """Pass a trap the guest caused back to the guest."""
        self.deliver(vector, vector in ERRCODE_VECTORS)

    def unhandled_message(self, vector: int) -> str:
        r = self.machine.regs
        extra = f" cr2 {self.host.last_cr2:#x}" if vector == 14 else ""
        return (f"unhandled trap {vector} at {r[EIP]:#x} "
                f"(errcode {r[ERRCODE]:#x}{extra})")
