"""The verifier of the no-lost-data test must notice every way a record can
be lost: a sector that never arrived, a torn record, a flipped bit, stale
data from another run, records out of order. (That lgk writes exactly this
format is checked by the kvm test, which verifies real disks.)"""
from __future__ import annotations

import struct
import zlib

import pytest

from support import SECTOR, intact_records, make_record, record_sectors

SEED = 4242


def disk_with(n: int, seed: int = SEED, size: int = 256 * SECTOR) -> bytearray:
    data = bytearray()
    for i in range(n):
        data += make_record(i, seed)
    return data + bytes(size - len(data))


def offset(n: int) -> int:
    return sum(record_sectors(i) for i in range(n)) * SECTOR


def test_records_have_their_lengths_and_crc():
    for n in range(20):
        r = make_record(n, SEED)
        assert len(r) == record_sectors(n) * SECTOR == (1 + n % 8) * SECTOR
        assert r[:8] == b"LGKREC01" and struct.unpack_from("<III", r, 8) == (n, 1 + n % 8, SEED)
        assert zlib.crc32(r[:-4]) == struct.unpack_from("<I", r, len(r) - 4)[0]
    assert make_record(3, SEED) != make_record(3, SEED + 1)


def test_an_intact_disk_counts_every_record():
    assert intact_records(bytes(disk_with(30)), SEED)[0] == 30
    assert intact_records(bytes(256 * SECTOR), SEED) == (0, "no record at byte 0 (expected record 0)")


@pytest.mark.parametrize("damage,lost_from", [
    (lambda d: d.__setitem__(offset(7) + 100, d[offset(7) + 100] ^ 1), 7),      # a flipped bit
    (lambda d: d.__setitem__(slice(offset(12) + SECTOR, offset(13)),            # torn: only its
                             bytes(offset(13) - offset(12) - SECTOR)), 12),     # first sector
    (lambda d: d.__setitem__(slice(offset(5), offset(6)),                        # never written
                             bytes(offset(6) - offset(5))), 5),
    (lambda d: d.__setitem__(slice(offset(9), offset(10)),                       # another run's
                             make_record(9, SEED + 1)), 9),
    (lambda d: d.__setitem__(slice(offset(16), offset(17)), make_record(8, SEED)), 16),  # swapped
])
def test_damage_is_found_where_it_is(damage, lost_from):
    d = disk_with(30)
    damage(d)
    n, why = intact_records(bytes(d), SEED)
    assert n == lost_from, why


def test_a_record_whose_crc_matches_but_payload_differs_is_caught():
    d = disk_with(10)
    at = offset(4)
    r = bytearray(make_record(4, SEED))
    r[40] ^= 0xFF
    r[-4:] = struct.pack("<I", zlib.crc32(bytes(r[:-4])))
    d[at:at + len(r)] = r
    assert intact_records(bytes(d), SEED) == (4, f"record 4 at byte {at}: payload differs")
