"""A content digest that reads only a file's data, never the bytes of its holes.

verify hashes the same file twice: in the source tree, where ``SEEK_DATA``/``SEEK_HOLE`` give
its data ranges, and in the image, where the extent or block map does. Either side may be
sparser than the other (``mke2fs -d`` does not store blocks of zeros; a source may hold
allocated zeros where the image has a hole), so the digest must depend on the bytes only:
it is the sha256 of every 64 KiB chunk (at an offset that is a multiple of 64 KiB) that holds
a non-zero byte, each preceded by its index, then the size. A hole and allocated zeros give
the same digest; a 1 TiB file with a few data blocks costs a few chunk reads.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator

CHUNK = 1 << 16
PIECE = 1 << 20  # bytes read at once; a multiple of CHUNK
_ZERO = bytes(CHUNK)


class ContentDigest:
    """Feed ``update(offset, data)`` the file's data ranges in increasing offset order (they
    must not overlap; what is never fed reads as zeros), then call ``hexdigest(size)``."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._index = -1  # the chunk being assembled from pieces, -1 for none
        self._chunk = bytearray(CHUNK)

    def update(self, offset: int, data: bytes) -> None:
        """Add ``data``, the bytes at ``offset`` of the file."""
        pos = 0
        while pos < len(data):
            index, start = divmod(offset + pos, CHUNK)
            take = min(CHUNK - start, len(data) - pos)
            if index != self._index:
                self._flush()
                if take == CHUNK:  # a whole chunk: no copy into the buffer
                    self._emit(index, data[pos:pos + CHUNK])
                    pos += take
                    continue
                self._index = index
            self._chunk[start:start + take] = data[pos:pos + take]
            pos += take

    def hexdigest(self, size: int) -> str:
        """The digest of a file of ``size`` bytes holding what was fed."""
        self._flush()
        self._hash.update(b"size" + size.to_bytes(8, "little"))
        return self._hash.hexdigest()

    def _flush(self) -> None:
        if self._index >= 0:
            self._emit(self._index, bytes(self._chunk))
            self._chunk[:] = _ZERO
            self._index = -1

    def _emit(self, index: int, chunk: bytes) -> None:
        if chunk != _ZERO:
            self._hash.update(index.to_bytes(8, "little"))
            self._hash.update(chunk)


def pieces(start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) reads covering [start, end), cut at multiples of PIECE so that whole
    chunks reach the digest without copying."""
    while start < end:
        stop = min(end, (start // PIECE + 1) * PIECE)
        yield start, stop - start
        start = stop


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each data range of an open file, from SEEK_DATA/SEEK_HOLE; the whole
    file when the filesystem cannot tell."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP) and pos == 0:
                yield 0, size
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end <= start:
            return
        yield start, end
        pos = end


def file_digest(path: bytes | str, size: int,
                progress: Callable[[int], object] | None = None) -> tuple[str, bool]:
    """(content digest, whether the file has holes) of a local regular file of ``size``
    bytes, reading only its data ranges; ``progress`` gets the count of each read."""
    digest = ContentDigest()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        holes = size > 0 and os.lseek(fd, 0, os.SEEK_HOLE) < size
        done = 0
        for start, end in data_ranges(fd, size):
            # From the chunk boundary: the bytes before start read as zeros and cost little,
            # and then every piece is chunk-aligned.
            for offset, length in pieces(max(start - start % CHUNK, done), end):
                data = os.pread(fd, length, offset)
                if not data:
                    break
                digest.update(offset, data)
                if progress is not None:
                    progress(len(data))
            done = end
    finally:
        os.close(fd)
    return digest.hexdigest(size), holes
