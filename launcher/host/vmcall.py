"""`vmcall`: how Linux 2.6.30-2.6.39 guests reach a Host that is not KVM's.

Linux 2.6.30-2.6.33 make every hypercall with `vmcall` (0F 01 C1), and
2.6.34-2.6.39 still make one (SEND_INTERRUPTS, in send_interrupts). Under
the original Host the instruction raised #UD, and the Host rewrote it to
`int $0x1f; nop` (CD 1F 90) and let it run again as a hypercall. Under KVM
the instruction never reaches the guest's IDT by itself:

- on AMD (SVM) it is an undefined instruction that KVM intercepts and, by
  default, "fixes" into AMD's `vmmcall` and answers as a KVM hypercall
  (-KVM_EPERM at ring 1: a silent wrong answer). With the quirk
  KVM_X86_QUIRK_FIX_HYPERCALL_INSN disabled (Linux 5.19+), KVM injects the
  #UD instead: it arrives in the Switcher as trap 6, and ``rewrite_at_eip``
  does what the original Host did. (QEMU's emulated SVM, our testbed,
  raises #GP(0) instead, as a CPU in VMX root mode did under the original
  Host: the #GP path takes it the same way.) The Machine disables the quirk
  (``Machine.trap_vmcall``); this is the path tested in the testbed.
- on Intel (VMX) `vmcall` is the native hypercall instruction: it always
  exits to KVM, which answers it itself, whatever quirks say. No #UD ever
  comes. So the Session refuses the releases that make every call with it
  (2.6.30-2.6.33) on such a host, in one sentence before the guest starts.
  2.6.34-2.6.39 run there: their one site is found and rewritten at INIT
  (``patch_known_sites``), before the guest can reach it, and were it ever
  missed the call would only be lost, not misread (it saves and restores
  eax, and the Host's held-back kicks deliver the interrupt anyway).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import GuestFault
from ..switcher import CS, EIP

if TYPE_CHECKING:
    from .core import Host

VMCALL = b"\x0f\x01\xc1"
INT_1F_NOP = b"\xcd\x1f\x90"
# send_interrupts in 2.6.34-2.6.39: push %eax; mov $19, %eax; vmcall; pop %eax; ret
SEND_INTERRUPTS = b"\x50\xb8\x13\x00\x00\x00" + VMCALL + b"\x58\xc3"


def rewrite_at_eip(host: "Host") -> bool:
    """A #UD at ring 1 on a `vmcall`: make it `int $0x1f; nop` in guest
    memory and resume at the same eip, where it now traps as a hypercall.
    False if this #UD is not one (it is the guest's to handle)."""
    r = host.regs
    if r[CS] & 3 != 1:
        return False
    eip = r[EIP]
    try:
        if host.read_guest_code(eip, 3) != VMCALL:
            return False
        at = [host.translate(eip + i) for i in range(3)]   # it may straddle a page
    except GuestFault:
        return False
    for i, gpa in enumerate(at):
        host.memory.set_u8(gpa, INT_1F_NOP[i], "vmcall rewrite")
    host.vmcall_rewrites += 1
    return True


def patch_known_sites(host: "Host") -> int:
    """At INIT, while the kernel's text is still unprotected plain memory:
    rewrite send_interrupts' `vmcall` wherever its exact instruction
    sequence appears in the loaded kernel. Returns how many were found."""
    memory = host.memory
    start, end = host.kernel_range()
    image = memory.view[start:end].tobytes()
    found, at = 0, image.find(SEND_INTERRUPTS)
    while at >= 0:
        memory.write(start + at + 6, INT_1F_NOP)
        found += 1
        at = image.find(SEND_INTERRUPTS, at + len(SEND_INTERRUPTS))
    host.vmcall_rewrites += found
    return found
