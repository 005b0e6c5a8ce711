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
