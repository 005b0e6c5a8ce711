"""Python-level fuzzing of what a guest controls: hypercalls, trap frames,
the async ring and virtqueues, on fabricated guest memory (no KVM).

The invariant: whatever the guest does, the Host either carries on or
raises GuestFault (and so kills the guest with a reason) — never another
exception, which would be a launcher crash. Bounded for CI; set
LGUEST_FUZZ_EXAMPLES for a longer run.
"""
from __future__ import annotations

import os
import sys

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from fakes import FakeMachine  # noqa: E402
from launcher.errors import GuestFault  # noqa: E402
from launcher.host import Host  # noqa: E402
from launcher.host import hypercalls as H  # noqa: E402
from launcher.memory import GuestMemory  # noqa: E402
from launcher.switcher import NREGS, TRAPNUM, EAX, EBX, ECX, EDX, ESI, CS, SS, EFLAGS  # noqa: E402
from launcher.virtio.vring import Vring  # noqa: E402

EXAMPLES = int(os.environ.get("LGUEST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LDATA = 0x1000
u32 = st.integers(0, 0xFFFFFFFF)
interesting = st.one_of(u32, st.sampled_from([0, 1, 0x1000, 0xFFF, 0x3FF000, 0x400000,
                                              0xC0000000, 0xFFC00000, 0xFFFFFFFF, 31, 32, 255,
                                              256, 1023, 1024, 3, 4, 511, 512]))
hypercall_numbers = st.one_of(st.sampled_from(sorted(H.NAMES)), u32)


def fresh_host(pae=None):
    m = FakeMachine()
    mem = m.memory
    mem.set_u32(LDATA + 1388, 0x80)
    mem.set_u32(LDATA + 1384, 0xC0000000)
    mem.write(LDATA + 24, b"\xff" * 64)
    h = Host(m, pae=pae)
    h.hcall_init(LDATA)
    r = m.regs
    r[CS], r[SS], r[EFLAGS] = 0x61, 0x69, 0x202
    return h


@FUZZ
@given(calls=st.lists(st.tuples(hypercall_numbers, interesting, interesting, interesting,
                                interesting), max_size=12),
       pae=st.sampled_from([None, True, False]),
       scribble=st.lists(st.tuples(st.integers(0, (4 << 20) - 8), u32), max_size=20))
def test_hypercall_sequences_only_ever_kill(calls, pae, scribble):
    h = fresh_host(pae)
    for addr, value in scribble:            # the guest owns its memory
        h.memory.set_u32(addr, value)
    try:
        for number, a, b, c, d in calls:
            if number == H.LHCALL_HALT:
                continue                    # would wait for an interrupt, by design
            r = h.regs
            r[TRAPNUM], r[EAX], r[EBX], r[ECX], r[EDX], r[ESI] = 0x1F, number, a, b, c, d
            try:
                h.handle_trap()
                h.validate_frame()
                h.requests.publish()
            except GuestFault:
                break
    finally:
        h.shutdown()


@FUZZ
@given(regs=st.lists(interesting, min_size=NREGS, max_size=NREGS),
       trapnum=st.integers(0, 255), code=st.binary(min_size=8, max_size=8))
def test_arbitrary_trap_frames_only_ever_kill(regs, trapnum, code):
    h = fresh_host()
    if trapnum == 10 and regs[EAX] == H.LHCALL_HALT:
        regs[EAX] = 0
    for i, v in enumerate(regs):
        h.regs[i] = v
    h.regs[TRAPNUM] = trapnum
    eip = regs[13]
    if eip + 8 <= h.memory.size:
        h.memory.write(eip, code)
    try:
        if trapnum == 0x1F and regs[EAX] == H.LHCALL_HALT:
            return
        h.handle_trap()
        h.prepare_resume()
    except GuestFault:
        pass
    finally:
        h.shutdown()


@FUZZ
@given(ring=st.binary(min_size=64, max_size=8192), base=st.integers(0, 0x3000),
       num=st.sampled_from([1, 2, 4, 8, 16, 256]), rounds=st.integers(1, 8))
def test_virtqueue_parser_only_ever_kills(ring, base, num, rounds):
    memory = GuestMemory(bytearray(0x10000))
    memory.write(base, ring[:memory.size - base])
    try:
        vq = Vring(memory, base, num, 4096, "fuzz")
        for _ in range(rounds):
            chain = vq.pop()
            if chain is None:
                break
            vq.push(chain.head, chain.writable_len)
    except GuestFault:
        pass


@FUZZ
@given(calls=st.lists(st.tuples(st.sampled_from([12, 13]), interesting, interesting,
                                interesting), max_size=12),
       scribble=st.lists(st.tuples(st.integers(0, (4 << 20) - 8), u32), max_size=40),
       block_page=st.tuples(st.integers(0, 1), u32, u32))
def test_2_6_23_dma_calls_only_ever_kill(tmp_path_factory, calls, scribble, block_page):
    """BIND_DMA and SEND_DMA with anything in their registers and in the
    structures they point at: the DMA bus carries on or kills."""
    from launcher.dma import DmaBus, pages_needed
    from launcher.generations import G0
    from launcher.virtio.block import Block
    from launcher.virtio.console import Console
    import io
    disk = tmp_path_factory.mktemp("dma") / "disk"
    disk.write_bytes(bytes(8192))
    devices = [Block(str(disk)), Console(io.BytesIO())]
    ram = (4 << 20) - pages_needed(devices) * 4096
    m = FakeMachine(4 << 20)
    h = Host(m, generation=G0)
    h.interrupts.raise_irq = lambda irq: None
    h.lguest_data = object()               # past LGUEST_INIT
    h.async_ring.drain = lambda: None
    bus = DmaBus(devices)
    bus.install(h, ram)
    for addr, value in scribble:
        h.memory.set_u32(addr, value)
    kind, sector, length = block_page
    h.memory.write(ram + 4096, kind.to_bytes(4, "little") + sector.to_bytes(4, "little")
                   + length.to_bytes(4, "little"))
    try:
        for number, key, arg, packed in calls + [(13, ram + 4096, arg, 0) for arg in (0x2000,)]:
            r = h.regs
            r[TRAPNUM], r[EAX], r[EDX], r[EBX], r[ECX] = 0x1F, number, key, arg, packed
            try:
                h.handle_trap()
            except GuestFault:
                break
    finally:
        bus.shutdown()
        for d in devices:
            d.close()
