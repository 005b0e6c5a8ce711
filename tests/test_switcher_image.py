"""switcher.elf, as built at install time, read with pyelftools."""
from launcher.machine import ERRCODE_VECTORS
from launcher.switcher import NREGS, load_image


def test_layout_symbols_describe_the_region_in_order():
    img = load_image()
    assert img.SW_BASE == 0xFFC00000
    order = [img.SW_BASE, img.SW_GDT, img.SW_IDT, img.SW_TSS, img.SW_RO_END,
             img.SW_LINEAR_PD, img.SW_PT, img.SW_PAE_PT, img.SW_RW_END]
    assert order == sorted(order)
    assert img.SW_RO_END == img.SW_REGPAGE
    assert all(a % 4096 == 0 for a in order)
    # struct lguest_regs ends exactly at the top of the register page (esp0).
    assert img.SW_REGS + img.SW_REGS_SIZE == img.SW_REGPAGE + 4096
    assert img.SW_REGS_SIZE == NREGS * 4


def test_entry_stubs_normalise_the_error_code():
    img = load_image()
    code = img.code
    for vector in range(256):
        stub = code[16 * vector:16 * vector + 16]
        pushes_zero = stub[:2] == b"\x6a\x00"
        assert pushes_zero == (vector not in ERRCODE_VECTORS), vector


def test_request_area_fits_below_the_register_frame():
    img = load_image()
    end = img.SW_REQ_INVLPG + 4 * img.SW_REQ_INVLPG_MAX
    assert end < img.SW_REGS - 512     # leaves room for the Switcher's stack


def test_the_fast_paths_bookkeeping_fits_and_does_not_overlap():
    img = load_image()
    # Python's facts: in the GDT page, past the 32 descriptors.
    assert img.SW_GDT + 32 * 8 <= img.SW_FAST < img.SW_FAST_END <= img.SW_GDT + 4096
    params = sorted(getattr(img, n) for n in img.symbols
                    if n.startswith(("SW_FAST_", "SW_CLK_ON", "SW_TICK_", "SW_NOIRQ_",
                                     "SW_IO_", "SW_CPUID_N", "SW_PTE_", "SW_PT_CR3",
                                     "SW_HCALL_ON", "SW_KERNEL_ADDR", "SW_APIC_ON",
                                     "SW_BLOCKED_AT", "SW_IRQPEND_AT", "SW_HSTATUS_AT",
                                     "SW_TIME_AT", "SW_TSC_MULT", "SW_NS_BASE"))
                    and img.SW_GDT <= getattr(img, n) < img.SW_GDT + 4096
                    and n != "SW_FAST_END")
    assert len(params) == len(set(params))
    assert params[-1] < img.SW_FAST_END
    # The Switcher's own words: between the invlpg list and its stack.
    words = sorted(getattr(img, n) for n in ("SW_CLK_PENDING", "SW_HOST_PENDING",
                                             "SW_HCALL_NEXT", "SW_REQ_TMICT", "SW_HALTED",
                                             "SW_FAST_CLOCKEVENTS", "SW_FAST_HALTS",
                                             "SW_FAST_TICKS", "SW_FAST_SYSCALLS",
                                             "SW_FAST_GPS", "SW_FAST_PTES"))
    assert len(words) == len(set(words))
    assert words[0] >= img.SW_REQ_INVLPG + 4 * img.SW_REQ_INVLPG_MAX
    assert img.SW_TSC_BASE + 8 <= img.SW_HALTED or img.SW_TSC_BASE >= img.SW_FAST_PTES + 4
    assert words[-1] + 4 < img.SW_REGS - 512
    # The CPUID copy sits in the TSS page past what the CPU reads.
    assert img.SW_TSS + 0x68 <= img.SW_CPUID_TABLE
    assert img.SW_CPUID_TABLE + 28 * img.SW_CPUID_MAX <= img.SW_TSS + 4096
