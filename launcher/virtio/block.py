"""virtio-blk (type 2), backed by a file (docs/abi.md §9.6).

A request is a 16-byte header {u32 type, u32 ioprio, u64 sector}, its data,
and a status byte in the last writable byte. Reads and writes go straight
between the file and guest memory (preadv/pwritev into the ring's buffers).
A request that reaches past the end of the file gets an I/O error status and
never changes the file's size; FLUSH is an fdatasync, so a write the guest
saw acknowledged and then flushed is on disk.
"""
from __future__ import annotations

import errno
import os
import stat
import struct

from ..errors import GuestFault, UserError
from .device import Device
from .vring import Chain, Vring, scatter, split

VIRTIO_ID_BLOCK = 2
VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_SCSI_CMD = 0, 1, 2
VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID = 4, 8
VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP = 0, 1, 2
VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_FLUSH = 2, 5, 9
VIRTIO_BLK_ID_BYTES = 20
SECTOR = 512
SEG_MAX = 254
HEADER = struct.Struct("<IIQ")
FIRST_HEADER_SIZE = 24      # Linux 2.6.24's request header also carries a u64 id


class Block(Device):
    type = VIRTIO_ID_BLOCK
    num_queues = 1

    def __init__(self, path: str, readonly: bool = False, index: int = 0) -> None:
        self.path, self.readonly = path, readonly
        self.name = f"block{index}"
        try:
            self.fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except IsADirectoryError:
            raise UserError(f"--block {path} is a directory") from None
        except OSError as exc:
            raise UserError(_open_error(path, readonly, exc)) from None
        try:
            mode = os.fstat(self.fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise UserError(f"--block {path} is neither a regular file nor a block device")
            # A block device's fstat size is 0; seeking to its end tells.
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            if self.size < SECTOR:
                raise UserError(f"--block {path} is smaller than one 512-byte sector")
        except BaseException:
            os.close(self.fd)
            raise
        self.serial = os.path.basename(path).encode()[:VIRTIO_BLK_ID_BYTES]

    def describe(self) -> str:
        return (f"{self.name}: virtio-blk on {self.path}, {self.size} bytes"
                f"{', read-only' if self.readonly else ''}")

    def features(self) -> int:
        f = (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_FLUSH)
        return f | (1 << VIRTIO_BLK_F_RO) if self.readonly else f

    def config(self) -> bytes:
        return struct.pack("<QII", self.size // SECTOR, 0, SEG_MAX)

    def service(self, index: int, vq: Vring) -> None:
        while (chain := vq.pop()) is not None:
            written = self.request(chain)
            vq.push(chain.head, written)

    def request(self, chain: Chain) -> int:
        """Carry out one request; the number of bytes written into the chain."""
        if not chain.writable or len(chain.writable[-1]) < 1:
            raise GuestFault(f"{self.name}: request without a status byte")
        size = FIRST_HEADER_SIZE if self.first_virtio else HEADER.size
        header, data_in = split(chain.readable, size)
        if header is None:
            raise GuestFault(f"{self.name}: request header shorter than {size} bytes")
        type_, _ioprio, sector = HEADER.unpack_from(header)
        last = chain.writable[-1]
        status_byte = last[len(last) - 1:]
        data_out = chain.writable[:-1] + ([last[:-1]] if len(last) > 1 else [])
        status, written = VIRTIO_BLK_S_OK, 0
        try:
            if type_ == VIRTIO_BLK_T_IN:
                written = self._transfer(os.preadv, sector, data_out)
                if written is None:
                    status, written = VIRTIO_BLK_S_IOERR, 0
            elif type_ == VIRTIO_BLK_T_OUT:
                if self.readonly or self._transfer(os.pwritev, sector, data_in) is None:
                    status = VIRTIO_BLK_S_IOERR
                elif not self.accepted & (1 << VIRTIO_BLK_F_FLUSH):
                    # A driver that knows no FLUSH (Linux before 2.6.32)
                    # takes an acknowledged write as stable: make it so.
                    os.fdatasync(self.fd)
            elif type_ == VIRTIO_BLK_T_FLUSH:
                if not self.readonly:
                    os.fdatasync(self.fd)
            elif type_ == VIRTIO_BLK_T_GET_ID:
                ident = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")
                written = scatter(ident, data_out)
            else:
                status = VIRTIO_BLK_S_UNSUPP
        except OSError:
            status, written = VIRTIO_BLK_S_IOERR, 0
        status_byte[0] = status
        return written + 1

    def io(self, write: bool, sector: int, bufs: list[memoryview]) -> int | None:
        """Write ``bufs`` at ``sector`` (on disk before this returns) or read
        into them; the bytes moved, or None for an I/O error (a read-only
        disk, past the end, the host's error)."""
        if write and self.readonly:
            return None
        try:
            done = self._transfer(os.pwritev if write else os.preadv, sector, bufs)
            if write and done is not None:
                os.fdatasync(self.fd)
        except OSError:
            return None
        return done

    def _in_range(self, sector: int, length: int) -> bool:
        return sector * SECTOR + length <= self.size and sector < (1 << 55)

    def _transfer(self, io, sector: int, bufs: list[memoryview]) -> int | None:
        """preadv or pwritev all of ``bufs`` at ``sector``; None (an I/O error
        for the guest) when that would reach past the end of the file."""
        length = sum(len(b) for b in bufs)
        if not self._in_range(sector, length):
            return None
        done = io(self.fd, bufs, sector * SECTOR) if bufs else 0
        if done != length:
            raise OSError("short transfer")
        return done

    def stop(self) -> None:
        if not self.readonly:
            try:
                os.fdatasync(self.fd)
            except OSError:
                pass

    def close(self) -> None:
        self.stop()
        os.close(self.fd)


def _open_error(path: str, readonly: bool, exc: OSError) -> str:
    """One sentence for a disk file that would not open."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        if not readonly and _readable(path):
            return f"--block {path} is read-only to us: add ,ro to use it read-only"
        return f"--block {path}: permission denied"
    if exc.errno == errno.EROFS:
        return f"--block {path} is on a read-only filesystem: add ,ro to use it read-only"
    return f"--block {path}: {exc.strerror}"


def _readable(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        return False
    return True

