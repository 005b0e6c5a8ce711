from launcher import descriptors as D


def test_flat_code_segment_matches_lguest_constants():
    # docs/abi.md §2.3: LGUEST_CS and the initial guest CS, low then high.
    assert D.split(D.segment(0, 0xFFFFF, 0xB, 0)) == (0x0000FFFF, 0x00CF9B00)
    assert D.split(D.segment(0, 0xFFFFF, 0xB, 1)) == (0x0000FFFF, 0x00CFBB00)
    assert D.split(D.segment(0, 0xFFFFF, 0x3, 1)) == (0x0000FFFF, 0x00CFB300)


def test_segment_base_and_limit_are_split_like_the_cpu_wants():
    d = D.segment(0x12345678, 0xABCDE, 0x3, 3)
    low, high = D.split(d)
    assert low == 0x5678BCDE
    assert high >> 24 == 0x12 and high & 0xFF == 0x34
    assert (high >> 16) & 0xF == 0xA
    assert D.dpl(d) == 3 and D.present(d)


def test_gate_round_trip():
    g = D.gate(0xC0123456, 0x61, D.GATE_TRAP, 3)
    low, high = D.split(g)
    assert D.gate_handler(low, high) == 0xC0123456
    assert low >> 16 == 0x61
    assert D.gate_type(high) == 0xF and D.gate_dpl(high) == 3 and D.gate_present(high)
    assert not D.gate_present(D.split(D.gate(0, 0x61, 0xE, 0, present_=False))[1])
