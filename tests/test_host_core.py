"""The exit loop's policy, on a fake machine: dispatch, INIT, SHUTDOWN,
frame validation and lguest's in/out emulation."""
import pytest

from fakes import FakeMachine
from launcher.errors import GuestFault
from launcher.host import Host
from launcher.host import hypercalls as H
from launcher.switcher import CS, EAX, EBX, ECX, EDX, EFLAGS, EIP, ERRCODE, SS, TRAPNUM

LDATA = 0x1000


def make_host(syscall_vec=0x80, kernel_address=0xC0000000):
    m = FakeMachine()
    m.memory.set_u32(LDATA + 1388, syscall_vec)
    m.memory.set_u32(LDATA + 1384, kernel_address)
    h = Host(m)
    m.regs[CS], m.regs[SS], m.regs[EFLAGS] = 0x61, 0x69, 0x202
    return h


def hypercall(h, number, *args):
    r = h.regs
    r[TRAPNUM], r[EAX] = 0x1F, number
    for i, a in zip((EBX, ECX, EDX), args):
        r[i] = a
    h.handle_trap()


def test_first_hypercall_must_be_init():
    h = make_host()
    with pytest.raises(GuestFault, match="LHCALL_FLUSH_TLB before LGUEST_INIT"):
        hypercall(h, H.LHCALL_FLUSH_TLB, 0)


def test_init_fills_in_the_hosts_fields():
    h = make_host()
    hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)
    mem = h.memory
    assert mem.u32(LDATA + 1368) == 0x400000          # reserve_mem: the top 4 MiB
    assert mem.u32(LDATA + 1372) == 1_000_000         # tsc_khz from KVM
    assert mem.u32(LDATA + 12) > 1_600_000_000        # time: the wall clock
    with pytest.raises(GuestFault, match="twice"):
        hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)


@pytest.mark.parametrize("kwargs,match", [
    ({"syscall_vec": 0x40}, "system call vector"),
    ({"kernel_address": 0xFFC00000}, "reserved region"),
])
def test_init_refuses_bad_lguest_data(kwargs, match):
    h = make_host(**kwargs)
    with pytest.raises(GuestFault, match=match):
        hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)


def test_init_outside_memory_kills():
    h = make_host()
    with pytest.raises(GuestFault, match="lguest_data"):
        hypercall(h, H.LHCALL_LGUEST_INIT, h.memory.size - 100)


@pytest.mark.parametrize("text,how,kind", [
    (b"Power down", 1, "poweroff"),
    (b"Kernel panic - not syncing: oops", 1, "crash"),
    (b"Restarting system", 2, "restart"),
])
def test_shutdown_kinds(text, how, kind):
    h = make_host()
    hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)
    h.memory.write(0x3000, text + b"\0")
    hypercall(h, H.LHCALL_SHUTDOWN, 0x3000, how)
    assert (h.outcome.kind, h.outcome.message) == (kind, text.decode())


def test_shutdown_reads_exactly_128_bytes():
    h = make_host()
    hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)
    h.memory.write(0x3000, b"x" * 200)
    hypercall(h, H.LHCALL_SHUTDOWN, 0x3000, 1)
    assert h.outcome.message == "x" * 127
    h = make_host()
    hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)
    with pytest.raises(GuestFault):
        hypercall(h, H.LHCALL_SHUTDOWN, h.memory.size - 64, 1)


def test_restart_with_an_unreadable_message_still_restarts():
    # Linux 3.14's `reboot -f` passes __pa(NULL) = 0x40000000.
    h = make_host()
    hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)
    hypercall(h, H.LHCALL_SHUTDOWN, 0x40000000, 2)
    assert h.outcome.kind == "restart"


def test_unknown_hypercall_kills():
    h = make_host()
    hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)
    with pytest.raises(GuestFault, match="unknown hypercall 3"):
        hypercall(h, 3)


@pytest.mark.parametrize("cs,ss", [(0x60, 0x68), (0x50, 0x58), (0x61, 0x7B), (0x62, 0x6A)])
def test_resume_refuses_ring_0_or_mismatched_rings(cs, ss):
    h = make_host()
    h.regs[CS], h.regs[SS] = cs, ss
    with pytest.raises(GuestFault, match="refusing to resume"):
        h.validate_frame()


@pytest.mark.parametrize("reg,value", [("ds", 0x50), ("es", 0x5B), ("fs", 0x80), ("gs", 0xFB),
                                       ("ds", 0x100), ("fs", 0x7F)])
def test_resume_refuses_host_or_out_of_range_selectors(reg, value):
    from launcher.switcher import REG_NAMES
    h = make_host()
    h.regs[REG_NAMES.index(reg)] = value
    with pytest.raises(GuestFault, match=f"{reg} {value:#x}"):
        h.validate_frame()


def test_resume_accepts_null_and_guest_selectors():
    from launcher.switcher import DS, ES, FS, GS
    h = make_host()
    h.regs[DS], h.regs[ES], h.regs[FS], h.regs[GS] = 0x7B, 0x68, 0xD8, 0x3
    h.validate_frame()


def test_resume_forces_if_on_and_iopl_vm_off():
    h = make_host()
    h.regs[CS], h.regs[SS], h.regs[EFLAGS] = 0x73, 0x7B, 0x23002
    h.validate_frame()
    assert h.regs[EFLAGS] == 0x202


@pytest.mark.parametrize("code,eax_before,eax_after,length", [
    (b"\xe4\x60", 0x12345600, 0x123456FF, 2),      # in al, imm8
    (b"\x66\xe5\x60", 0x12340000, 0x1234FFFF, 3),  # in ax, imm8
    (b"\xed", 0, 0xFFFFFFFF, 1),                   # in eax, dx
    (b"\xec", 0xAAAAAA00, 0xAAAAAAFF, 1),          # in al, dx
    (b"\xe6\x80", 7, 7, 2),                        # out imm8, al: dropped
    (b"\xef", 7, 7, 1),                            # out dx, eax
    (b"\xfa", 7, 7, 1),                            # cli: skipped
])
def test_gp0_emulates_port_io_like_lguest(code, eax_before, eax_after, length):
    h = make_host()
    h.memory.write(0x2000, code + b"\x90" * 4)
    r = h.regs
    r[TRAPNUM], r[ERRCODE], r[EIP], r[EAX] = 13, 0, 0x2000, eax_before
    h.handle_trap()
    assert (r[EAX], r[EIP]) == (eax_after, 0x2000 + length)


def test_gp_from_ring3_or_other_instruction_is_reflected():
    h = make_host()
    h.memory.write(0x2000, b"\x0f\x0b")   # ud2, not port I/O
    r = h.regs
    r[TRAPNUM], r[ERRCODE], r[EIP] = 13, 0, 0x2000
    with pytest.raises(GuestFault, match="unhandled trap 13 at 0x2000"):
        h.handle_trap()


def test_launcher_can_claim_ports():
    h = make_host()
    seen = []
    h.port_in = lambda port, size: 0x42 if port == 0x64 else (1 << 8 * size) - 1
    h.port_out = lambda port, size, value: seen.append((port, size, value))
    h.memory.write(0x2000, b"\xe4\x64\xe6\x70")
    r = h.regs
    r[TRAPNUM], r[ERRCODE], r[EIP], r[EAX] = 13, 0, 0x2000, 0
    h.handle_trap()
    assert r[EAX] == 0x42
    h.handle_trap()
    assert seen == [(0x70, 1, 0x42)]


@pytest.mark.parametrize("code,reg", [(b"\x0f\x20\xe0", EAX), (b"\x0f\x20\xe3", EBX),
                                      (b"\x0f\x20\xe1", ECX)])
def test_reading_cr4_at_ring_1_gives_0(code, reg):
    """Linux 4.0-4.7 read cr4 with a raw mov before they have an IDT."""
    h = make_host()
    h.memory.write(0x2000, code + b"\x90")
    r = h.regs
    r[TRAPNUM], r[ERRCODE], r[EIP], r[reg] = 13, 0, 0x2000, 0x1234
    h.handle_trap()
    assert (r[reg], r[EIP]) == (0, 0x2003)


@pytest.mark.parametrize("code", [b"\x0f\x20\xe4", b"\x0f\x20\xc0", b"\x0f\x22\xe0"])
def test_other_control_register_moves_are_reflected(code):
    h = make_host()                          # into esp, cr0, a write to cr4
    h.memory.write(0x2000, code + b"\x90")
    r = h.regs
    r[TRAPNUM], r[ERRCODE], r[EIP] = 13, 0, 0x2000
    with pytest.raises(GuestFault, match="unhandled trap 13"):
        h.handle_trap()


def test_a_refused_port_write_is_the_guests_gp():
    h = make_host()
    h.port_out = lambda port, size, value: False
    h.memory.write(0x2000, b"\xef")                    # out dx, eax
    r = h.regs
    r[TRAPNUM], r[ERRCODE], r[EIP], r[EDX] = 13, 0, 0x2000, 0xCFC
    with pytest.raises(GuestFault, match="unhandled trap 13 at 0x2000"):
        h.handle_trap()                                # no handler: reflecting it kills
    assert r[EIP] == 0x2000


def test_mmio_exits_go_to_the_launcher_and_reads_complete():
    h = make_host()
    vcpu = h.machine.vcpu
    seen = []
    h.on_mmio = lambda addr, width, value: seen.append((addr, width, value)) or 0xBEEF
    vcpu.mmio_next = (0x5000000, 2, None)
    h.handle_mmio()
    assert seen == [(0x5000000, 2, None)] and vcpu.mmio_result == 0xBEEF
    vcpu.mmio_next = (0x5000038, 2, 1)
    h.handle_mmio()
    assert seen[-1] == (0x5000038, 2, 1)
    vcpu.mmio_next = (0x5000000, 8, 0)
    with pytest.raises(GuestFault, match="outside its memory"):
        h.handle_mmio()
    h.on_mmio = None
    vcpu.mmio_next = (0x5000000, 4, None)
    with pytest.raises(GuestFault, match="0x5000000"):
        h.handle_mmio()


@pytest.mark.parametrize("number", [3, 11, 12, 20, 64, 0xFFFFFFFF])
def test_unused_hypercall_numbers_kill(number):
    h = make_host()
    h.memory.write(LDATA + 24, b"\xff" * 64)
    hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)
    with pytest.raises(GuestFault, match=f"unknown hypercall {number}"):
        hypercall(h, number)
    h.shutdown()


def test_every_abi_hypercall_has_a_handler():
    h = make_host()
    assert set(h.hypercalls) == set(H.NAMES)
    h.shutdown()


def test_clock_event_raises_irq0_once_and_can_be_cancelled():
    import time
    h = make_host()
    h.memory.write(LDATA + 24, b"\xff" * 64)
    hypercall(h, H.LHCALL_LGUEST_INIT, LDATA)
    hypercall(h, H.LHCALL_SET_CLOCKEVENT, 20_000_000)        # 20 ms
    time.sleep(0.2)
    assert h.interrupts.pending == 1 and h.clock.expiries == 1
    h.interrupts.pending = 0
    hypercall(h, H.LHCALL_SET_CLOCKEVENT, 50_000_000)
    hypercall(h, H.LHCALL_SET_CLOCKEVENT, 0)                  # cancel
    time.sleep(0.2)
    assert h.interrupts.pending == 0 and h.clock.expiries == 1
    h.shutdown()
