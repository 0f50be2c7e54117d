"""Streaming ``.nii.gz`` -> sharded zarr v3: compress while the gzip stream is inflated.

A gzip stream can only be inflated sequentially, on one core, and it is volume-major: the
default shard (spatial block x every volume) is complete only once the last volume is
inflated. Its *inner chunks* (spatial block x a range of volumes, see
:func:`mriflow.io.zarr._layout.default_shards`) are complete much earlier. So the calling
thread only inflates; a packing thread copies the output into a buffer of one volume range;
two compression threads cut each full range into inner chunks, compress them with the
array's own codec and append them to their shard's file, in volume order; one more thread
hashes the compressed input. When the stream ends, each shard file gets its index (the
zarr v3 sharding layout: the inner chunks, then ``(offset, nbytes)`` per inner chunk with a
CRC32C) and is moved into place, region by region, each region marked done after its
shards. What is left after the inflate is compressing the last volume range and writing
the indexes, instead of a whole compression pass.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import math
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mriflow.errors import CorruptDataError

__all__ = ["inflate_blocks", "inner_chunk_encoder", "stream_gzip_to_shards"]

#: Inflated bytes handed over per ``decompress`` call (zlib output buffer size).
INFLATE_OUTPUT_BYTES = 16 << 20
#: Compressed input read per ``read`` call.
READ_BYTES = 8 << 20
#: Inflated blocks waiting for the packing thread before the inflate waits for it.
MAX_PENDING = 8
#: Threads compressing inner chunks (beside the one inflating).
COMPRESS_THREADS = 2
#: Volume groups held at once (one being filled from the stream, others compressing).
GROUPS_IN_FLIGHT = 2
#: Largest unsigned 64-bit value: the index entry of an inner chunk that is not stored.
_EMPTY = 2**64 - 1


def inner_chunk_encoder(array: Any) -> Callable[[np.ndarray], bytes] | None:
    """Encoder producing the exact stored bytes of one inner chunk of sharded ``array``.

    The codecs come from the array's metadata (so a resumed store keeps its own); the
    encoders are numcodecs', which zarr's ``BloscCodec``/``GzipCodec`` call too. Returns
    None when the array is not a sharded zarr v3 array of the plain layout this writer
    knows (little-endian bytes, at most one compressor, index at the end with CRC32C).
    """
    import numcodecs
    from zarr.codecs import (
        BloscCodec,
        BytesCodec,
        Crc32cCodec,
        GzipCodec,
        ShardingCodec,
    )

    metadata = array.metadata
    if getattr(metadata, "zarr_format", 2) != 3 or len(metadata.codecs) != 1:
        return None
    sharding = metadata.codecs[0]
    if not isinstance(sharding, ShardingCodec):
        return None
    index_codecs = tuple(sharding.index_codecs)
    if (
        sharding.index_location.value != "end"
        or len(index_codecs) != 2
        or not isinstance(index_codecs[0], BytesCodec)
        or not isinstance(index_codecs[1], Crc32cCodec)
    ):
        return None
    codecs = tuple(sharding.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return None
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return None
    if len(codecs) == 1:
        return lambda block: block.astype(block.dtype.newbyteorder("<"), copy=False).tobytes()
    codec = codecs[1]
    if isinstance(codec, BloscCodec):
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
        compressor = numcodecs.Blosc(
            cname=codec.cname.value,
            clevel=codec.clevel,
            shuffle=shuffle,
            blocksize=codec.blocksize,
            typesize=codec.typesize,
        )
    elif isinstance(codec, GzipCodec):
        compressor = numcodecs.GZip(level=codec.level)
    else:
        return None

    def encode(block: np.ndarray) -> bytes:
        little = block.astype(block.dtype.newbyteorder("<"), copy=False)
        return bytes(compressor.encode(little))

    return encode


def _shard_index(lengths: Sequence[int]) -> bytes:
    """Index of a shard whose inner chunks (in order) have ``lengths`` (0: not stored)."""
    import numcodecs

    table = np.full((len(lengths), 2), _EMPTY, dtype="<u8")
    offset = 0
    for position, length in enumerate(lengths):
        if length:
            table[position] = (offset, length)
            offset += length
    return bytes(numcodecs.CRC32C(location="end").encode(table.tobytes()))


class _Packer:
    """Fills volume groups from the inflated stream (``feed``, called in stream order from
    one thread) and compresses the inner chunks of each full group on the ``compressing``
    pool, one task per z slab of shards. Each task then appends its inner chunks to their
    shards' files, after the task of the previous group for the same slab (so every shard
    file holds its inner chunks in volume order). At most :data:`GROUPS_IN_FLIGHT` groups
    are held; ``feed`` waits for the oldest beyond that."""

    def __init__(
        self,
        shape: Sequence[int],
        file_dtype: np.dtype,
        data_offset: int,
        inner: Sequence[int],
        wanted_shards: list[tuple[int, int, int]],
        encode: Callable[[np.ndarray], bytes],
        shard_file: Callable[[tuple[int, int, int]], str],
        compressing: concurrent.futures.Executor,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)  # NIfTI order x, y, z, t
        self.file_dtype = file_dtype
        self.data_offset = int(data_offset)
        self.inner = tuple(int(n) for n in inner)  # zarr order t, z, y, x
        self.by_z: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
        for z, y, x in wanted_shards:
            self.by_z[z].append((y, x))
        self.encode = encode
        self.shard_file = shard_file
        self.compressing = compressing
        self.in_flight: collections.deque[
            tuple[list[concurrent.futures.Future[None]], np.ndarray]
        ] = collections.deque()
        self.free: list[np.ndarray] = []
        self.volume_bytes = int(np.prod(self.shape[:3])) * file_dtype.itemsize
        self.group_volumes = self.inner[0]
        self.groups = math.ceil(self.shape[3] / self.group_volumes)
        self.data_bytes = self.volume_bytes * self.shape[3]
        self.group = 0
        self.filled = 0
        self.buffer: np.ndarray | None = None
        # per shard (z, y, x): stored length of each inner chunk so far (0: not stored)
        self.lengths: dict[tuple[int, int, int], list[int]] = {shard: [] for shard in wanted_shards}
        # z slab -> set once the latest task for it has appended its inner chunks
        self.appended: dict[int, threading.Event] = {}

    def _group_bytes(self, group: int) -> int:
        volumes = min(self.group_volumes, self.shape[3] - group * self.group_volumes)
        return volumes * self.volume_bytes

    def feed(self, position: int, data: bytes) -> None:
        """Take inflated bytes starting at ``position`` of the decompressed stream."""
        view = memoryview(data)
        start = max(0, self.data_offset - position)
        while start < len(view) and self.group < self.groups:
            if self.buffer is None:
                while len(self.in_flight) >= GROUPS_IN_FLIGHT:
                    self._wait_oldest()
                size = self._group_bytes(self.group)
                self.buffer = self.free.pop()[:size] if self.free else np.empty(size, np.uint8)
            take = min(len(self.buffer) - self.filled, len(view) - start)
            self.buffer[self.filled : self.filled + take] = np.frombuffer(
                view[start : start + take], dtype=np.uint8
            )
            self.filled += take
            start += take
            if self.filled == len(self.buffer):
                nx, ny, nz = self.shape[:3]
                values = self.buffer.view(self.file_dtype).reshape(-1, nz, ny, nx)
                tasks = []
                for z in sorted(self.by_z):
                    previous = self.appended.get(z)
                    self.appended[z] = threading.Event()
                    tasks.append(
                        self.compressing.submit(
                            self._pack, self.group, z, values, previous, self.appended[z]
                        )
                    )
                self.in_flight.append((tasks, self.buffer))
                self.group += 1
                self.filled = 0
                self.buffer = None

    def finish(self) -> None:
        """Wait for every compression task (raising the first error)."""
        while self.in_flight:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        tasks, buffer = self.in_flight.popleft()
        for future in tasks:
            future.result()
        self.free.append(buffer)  # reused: no fresh pages to fault in for the next group

    def _pack(
        self,
        group: int,
        z: int,
        values: np.ndarray,
        previous: threading.Event | None,
        appended: threading.Event,
    ) -> None:
        inner_t, bz, by, bx = self.inner
        native = self.file_dtype.newbyteorder("=")
        encoded: list[tuple[tuple[int, int, int], bytes]] = []
        for y, x in self.by_z[z]:
            part = values[:, z * bz : (z + 1) * bz, y * by : (y + 1) * by, x * bx : (x + 1) * bx]
            if part.shape == (inner_t, bz, by, bx) and part.dtype == native:
                block = np.ascontiguousarray(part)
            else:  # edge chunk: zarr stores it whole, padded with the fill value (0)
                block = np.zeros((inner_t, bz, by, bx), dtype=native)
                block[tuple(slice(0, n) for n in part.shape)] = part
            # as zarr does, an inner chunk equal to the fill value is not stored
            encoded.append(((z, y, x), self.encode(block) if block.any() else b""))
        try:
            if previous is not None:  # tasks start in submission order: it has started
                previous.wait()
            for shard, data in encoded:
                if data or not group:
                    with open(self.shard_file(shard), "ab" if group else "wb") as stream:
                        stream.write(data)
                self.lengths[shard].append(len(data))
        finally:  # (an error is raised by whoever waits for this task)
            appended.set()


def stream_gzip_to_shards(
    source: Path,
    array: Any,
    data_offset: int,
    shape: Sequence[int],
    file_dtype: np.dtype,
    regions: list[tuple[slice, ...]],
    todo: list[int],
    mark_done: Callable[[list[int]], None],
    shard_file: Callable[[str], str],
    publish: Callable[[str, str | None], None],
) -> str:
    """Inflate ``source`` once and write the level-0 regions ``todo`` of sharded ``array``.

    ``shape``/``file_dtype``/``data_offset`` describe the NIfTI pixel data (F order, 4D);
    ``regions`` are the z slabs of whole shards (``todo`` indexes the missing ones).
    ``shard_file(key)`` names the local file in which the shard with chunk key ``key`` is
    built; ``publish(key, path)`` moves the finished file into the store (``path`` None:
    every inner chunk was the fill value, so the store must hold no file for it). Regions
    are marked done (``mark_done([index])``) after all their shards are published.
    Returns ``sha256:`` of ``source``.
    """
    encode = inner_chunk_encoder(array)
    if encode is None:
        raise ValueError(f"{array.path}: not a sharded array this writer can fill")
    inner = tuple(int(n) for n in array.chunks)
    shards = tuple(int(n) for n in array.shards)
    if shards[1:] != inner[1:] or shards[0] % inner[0]:
        raise ValueError(f"{array.path}: shards {shards} are not inner chunks {inner} x volumes")
    nx, ny = (int(n) for n in shape[:2])
    grid_y, grid_x = math.ceil(ny / inner[2]), math.ceil(nx / inner[3])
    wanted_z = sorted({regions[r][1].start // inner[1] for r in todo})
    wanted = [(z, y, x) for z in wanted_z for y in range(grid_y) for x in range(grid_x)]

    def key(shard: tuple[int, int, int]) -> str:
        return str(array.metadata.encode_chunk_key((0, *shard)))

    digest = hashlib.sha256()
    per_shard = shards[0] // inner[0]
    with (
        concurrent.futures.ThreadPoolExecutor(1) as hasher,
        concurrent.futures.ThreadPoolExecutor(1) as packing,
        concurrent.futures.ThreadPoolExecutor(COMPRESS_THREADS) as compressing,
    ):
        packer = _Packer(
            shape,
            file_dtype,
            data_offset,
            inner,
            wanted,
            encode,
            lambda shard: shard_file(key(shard)),
            compressing,
        )
        total = packer.data_offset + packer.data_bytes
        try:
            _inflate_into(source, digest, hasher, packing, packer.feed, total)
        finally:
            packer.finish()
        if packer.group != packer.groups:
            raise CorruptDataError(
                f"{source}: the gzip stream ends before the pixel data does "
                f"({packer.group} of {packer.groups} volume groups)"
            )

        def finalize(shard: tuple[int, int, int]) -> None:
            lengths = packer.lengths[shard] + [0] * (per_shard - len(packer.lengths[shard]))
            path = shard_file(key(shard))
            if not any(lengths):
                os.unlink(path)
                publish(key(shard), None)
                return
            with open(path, "ab") as stream:
                stream.write(_shard_index(lengths))
            publish(key(shard), path)

        by_z: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
        for shard in wanted:
            by_z[shard[0]].append(shard)
        for r in todo:
            list(compressing.map(finalize, by_z[regions[r][1].start // inner[1]]))
            mark_done([r])
    return f"sha256:{digest.hexdigest()}"


def inflate_blocks(
    source: Path,
    digest: Any,
    hasher: concurrent.futures.Executor,
    read_bytes: int = READ_BYTES,
    output_bytes: int = INFLATE_OUTPUT_BYTES,
) -> Iterator[bytes]:
    """Inflate gzip ``source`` sequentially on this thread, yielding its output in order,
    at most ``output_bytes`` at a time; the compressed input goes to ``digest.update`` on
    the ``hasher`` thread meanwhile (one read ahead at most). Multi-member files and zero
    padding after the last member are accepted; a damaged or truncated stream is a
    :class:`CorruptDataError` naming ``source``."""
    decompressor = zlib.decompressobj(31)
    hashed: concurrent.futures.Future[None] | None = None
    in_member = False
    with source.open("rb", buffering=0) as stream:
        while chunk := stream.read(read_bytes):
            if hashed is not None:
                hashed.result()
            hashed = hasher.submit(digest.update, chunk)
            data = chunk
            while data:
                if not in_member and not data.strip(b"\0"):
                    break  # zero padding after the last member
                in_member = True
                try:
                    out = decompressor.decompress(data, output_bytes)
                except zlib.error as exc:
                    raise CorruptDataError(f"{source}: damaged gzip stream ({exc})") from exc
                if out:
                    yield out
                if decompressor.eof:
                    data = decompressor.unused_data
                    decompressor = zlib.decompressobj(31)
                    in_member = False
                else:
                    data = decompressor.unconsumed_tail
    if hashed is not None:
        hashed.result()
    if in_member:
        raise CorruptDataError(f"{source}: gzip stream ends early; the file is truncated")


def _inflate_into(
    source: Path,
    digest: Any,
    hasher: concurrent.futures.Executor,
    packing: concurrent.futures.Executor,
    feed: Callable[[int, bytes], None],
    needed: int,
) -> None:
    """Inflate gzip ``source`` (multi-member allowed) on this thread, handing each block
    of output to ``feed`` on the ``packing`` thread in order and the compressed input to
    ``digest`` on the ``hasher`` thread. Fails unless at least ``needed`` bytes come out."""
    pending: collections.deque[concurrent.futures.Future[None]] = collections.deque()
    position = 0
    for out in inflate_blocks(source, digest, hasher):
        pending.append(packing.submit(feed, position, out))
        position += len(out)
        while len(pending) > MAX_PENDING or (pending and pending[0].done()):
            pending.popleft().result()
    while pending:
        pending.popleft().result()
    if position < needed:
        raise CorruptDataError(
            f"{source}: file ends before the pixel data does ({position} of {needed} bytes)"
        )
