"""A file layer for tests that models a power loss.

Writes since a segment's last sync stay in an overlay in memory; reads see them (the page
cache). `power_loss()` throws the overlays away, optionally letting a random subset of
512-byte sectors reach the disk first, because real disks persist unsynced writes in any
order. Whatever survives is what recovery must cope with. `fail_syncs()` makes the next
syncs raise EIO, to test that the store refuses to go on after a failed fsync.

Metadata writes (`write_atomic`, markers, removes) fsync before they return in the real
layer, so they are durable at once here too.
"""

from __future__ import annotations

import errno
import random
import threading

from .fs import OsFileSystem, OsSegmentFile

SECTOR_BYTES = 512
assert SECTOR_BYTES > 0 and SECTOR_BYTES & (SECTOR_BYTES - 1) == 0


class PoweredOffError(OSError):
    """A handle opened before the simulated power loss was used after it."""


class FaultySegmentFile:
    def __init__(self, fs: "FaultyFileSystem", base: OsSegmentFile) -> None:
        self._fs = fs
        self._base = base
        self.path = base.path
        self.size = base.size
        self._overlay: list[tuple[int, bytes]] = []
        self._dead = False
        # Readers (pulls) and the writer share this handle from different threads: a sync
        # moving the overlay to the file must not let a read see neither (zeros instead of
        # data: found by `rmqz chaos --fault power-loss`, a leader failing as "corrupt").
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self._dead:
            raise PoweredOffError(errno.EIO, "handle from before the power loss", self.path)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        assert 0 <= offset and offset + len(data) <= self.size, (self.path, offset, len(data))
        with self._lock:
            self._check()
            self._overlay.append((offset, bytes(data)))

    def pread(self, length: int, offset: int) -> bytes:
        with self._lock:
            self._check()
            buf = bytearray(self._base.pread(length, offset))
            end = offset + length
            for w_off, w_data in self._overlay:
                lo, hi = max(offset, w_off), min(end, w_off + len(w_data))
                if lo < hi:
                    buf[lo - offset:hi - offset] = w_data[lo - w_off:hi - w_off]
        return bytes(buf)

    def sync(self) -> None:
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        self._check()
        if self._fs.take_sync_failure():
            raise OSError(errno.EIO, "injected fsync failure", self.path)
        self._apply(self._overlay)
        self._overlay = []
        self._fs.sync_count += 1

    def zero_from(self, offset: int) -> None:
        with self._lock:
            self._sync_locked()
            self._base.zero_from(offset)

    def close(self) -> None:
        # Closing does not make data durable: the handle stays registered with its pending
        # writes (the page cache), and the next open of the path gets it back.
        pass

    def _apply(self, writes: list[tuple[int, bytes]]) -> None:
        for w_off, w_data in writes:
            self._base.pwrite(w_data, w_off)

    def lose_power(self, rng: random.Random | None, keep_probability: float) -> None:
        with self._lock:
            self._lose_power_locked(rng, keep_probability)

    def _lose_power_locked(self, rng: random.Random | None, keep_probability: float) -> None:
        survivors = []
        if rng is not None and keep_probability > 0:
            for w_off, w_data in self._overlay:
                survivors.extend(_random_sectors(w_off, w_data, rng, keep_probability))
        self._apply(survivors)
        self._overlay = []
        self._dead = True
        self._base.close()

    def pending_bytes(self) -> int:
        return sum(len(d) for _, d in self._overlay)


def _random_sectors(offset: int, data: bytes, rng: random.Random, keep: float):
    pos = offset
    end = offset + len(data)
    while pos < end:
        sector_end = min(end, (pos // SECTOR_BYTES + 1) * SECTOR_BYTES)
        if rng.random() < keep:
            yield pos, data[pos - offset:sector_end - offset]
        pos = sector_end


class FaultyFileSystem(OsFileSystem):
    """OsFileSystem whose segment writes are volatile until synced."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a reader and the writer may open a path at once
        self._open: dict[str, FaultySegmentFile] = {}
        self._sync_failures = 0
        self.sync_count = 0

    def open_segment(self, path: str, size: int) -> FaultySegmentFile:
        with self._lock:
            live = self._open.get(path)
            if live is not None and not live._dead:
                # A second handle on the same file must see the same page cache.
                return live
            handle = FaultySegmentFile(self, OsSegmentFile(path, size))
            self._open[path] = handle
            return handle

    def open_reader(self, path: str) -> FaultySegmentFile:
        """Readers share the writer's handle: they must see its unsynced writes (the page
        cache). Closing a faulty handle is a no-op, so a reader can never close the writer's."""
        return self.open_segment(path, self.file_size(path))

    def remove(self, path: str) -> None:
        with self._lock:
            handle = self._open.pop(path, None)
        if handle is not None:
            with handle._lock:
                handle._overlay = []
                handle._dead = True
                handle._base.close()
        super().remove(path)

    def fail_syncs(self, count: int = 1) -> None:
        self._sync_failures += count

    def take_sync_failure(self) -> bool:
        if self._sync_failures > 0:
            self._sync_failures -= 1
            return True
        return False

    def pending_bytes(self) -> int:
        return sum(h.pending_bytes() for h in self._open.values() if not h._dead)

    def power_loss(self, rng: random.Random | None = None, keep_probability: float = 0.0) -> None:
        """Every unsynced write is lost, except a random subset of sectors when a rng is given."""
        assert 0.0 <= keep_probability <= 1.0
        for handle in list(self._open.values()):
            if not handle._dead:
                handle.lose_power(rng, keep_probability)
        self._open.clear()
