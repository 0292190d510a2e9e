"""Tiles of a slide read for scoring, in grid order and in batches, ahead of inference.

* :class:`ThreadTileReader` - reader threads sharing one open Slide (the default: the TIFF reader decodes
  JPEG in C with the GIL released), prefetching a few batches;
* :func:`iter_batches_processes` - DataLoader worker processes that open the slide once per worker;
* :func:`reader_plan` - how many readers and how much read-ahead: overlap reading with inference where a
  core (or a GPU) is free for it, else read and infer in turn on all cores; :func:`available_cpus`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]


def available_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ThreadTileReader:
    """Reads batches of tiles with a thread pool.

    A TIFF-family slide read directly (:class:`pipeline.slides.tiff_slide.TiffSlide`) is opened once and shared by the
    threads: its segment cache is thread-safe and libjpeg-turbo decodes with the GIL released, so a JPEG tile
    that two neighbouring batches need is decoded once. Other slides are opened once per thread.

    ``prefetch`` batches are read ahead while the consumer works on the current one (reading overlapped with
    inference), each by one thread. With ``prefetch=0`` a batch is read only when asked for, split over all
    threads: the choice when inference already keeps every core busy, where overlapped readers would only
    preempt the inference threads (which then wait for each other at every layer).
    Batches are written into a small ring of reused buffers (made by ``alloc(shape)``; pinned memory for a
    GPU): a yielded batch stays valid until the next one is asked for.
    """

    def __init__(self, path, mpp: float | None, tile_px: int, target_mpp: float, workers: int,
                 prefetch: int | None = None, alloc=None):
        self.path, self.mpp, self.tile_px, self.target_mpp = path, mpp, tile_px, target_mpp
        self.workers = max(1, workers)
        self.prefetch = self.workers + 1 if prefetch is None else max(0, prefetch)
        self.alloc = alloc or (lambda shape: np.empty(shape, np.uint8))
        self._local = threading.local()
        self._shared = None
        self._opened: list = []
        self._lock = threading.Lock()

    def _slide(self):
        if self._shared is not None:
            return self._shared
        slide = getattr(self._local, "slide", None)
        if slide is None:
            from pipeline.slides.reader import open_slide
            from pipeline.slides.tiff_slide import TiffSlide

            with self._lock:
                if self._shared is not None:
                    return self._shared
                slide = open_slide(self.path, mpp=self.mpp)
                self._opened.append(slide)
                if isinstance(slide, TiffSlide):
                    self._shared = slide
                else:
                    self._local.slide = slide
        return slide

    def read(self, xs: np.ndarray, ys: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Tiles at level-0 corners ``xs``, ``ys`` as (N, tile_px, tile_px, 3) uint8 (into ``out`` if given)."""
        return self._slide().read_tiles(xs, ys, self.tile_px, self.target_mpp, out)

    def iter_batches(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """Batches of ``batch_size`` tiles in grid order (the last one shorter)."""
        spans = _batches(len(x), batch_size)
        if not spans:
            return
        ring = [self.alloc((batch_size, self.tile_px, self.tile_px, 3)) for _ in range(min(len(spans),
                                                                                          self.prefetch + 2))]

        def out(k: int) -> np.ndarray:
            a, b = spans[k]
            return ring[k % len(ring)][: b - a]

        with ThreadPoolExecutor(self.workers, thread_name_prefix="tile-reader") as pool:
            if self.prefetch == 0:
                for k, (a, b) in enumerate(spans):
                    buf, parts = out(k), np.array_split(np.arange(a, b), self.workers)
                    jobs = [pool.submit(self.read, x[p], y[p], buf[p[0] - a:p[-1] + 1 - a]) for p in parts if len(p)]
                    for job in jobs:
                        job.result()
                    yield buf
                return
            pending = [pool.submit(self.read, x[a:b], y[a:b], out(k)) for k, (a, b) in
                       enumerate(spans[: self.prefetch])]
            for k in range(len(spans)):
                batch = pending.pop(0).result()
                ahead = k + len(pending) + 1
                if ahead < len(spans) and len(pending) < self.prefetch:
                    a, b = spans[ahead]
                    pending.append(pool.submit(self.read, x[a:b], y[a:b], out(ahead)))
                yield batch

    def close(self) -> None:
        for slide in self._opened:
            slide.close()
        self._opened.clear()
        self._shared = None


class _BatchDataset:
    """torch Dataset of whole batches (index = batch number); the slide is opened once per worker process."""

    def __init__(self, path, mpp, tile_px, target_mpp, x, y, batch_size):
        self.reader = ThreadTileReader(path, mpp, tile_px, target_mpp, workers=1)
        self.x, self.y, self.spans = x, y, _batches(len(x), batch_size)

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int):
        import torch

        a, b = self.spans[i]
        return torch.from_numpy(self.reader.read(self.x[a:b], self.y[a:b]))


def _worker_init(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)


def iter_batches_processes(path, mpp, tile_px, target_mpp, x, y, batch_size, workers) -> Iterator[np.ndarray]:
    """The same batches from a torch DataLoader with ``workers`` processes (each opens the slide once)."""
    import torch.utils.data as tud

    ds = _BatchDataset(path, mpp, tile_px, target_mpp, x, y, batch_size)
    loader = tud.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, worker_init_fn=_worker_init,
                            prefetch_factor=2 if workers else None, persistent_workers=False)
    for batch in loader:
        yield batch.numpy()
    ds.reader.close()


def reader_plan(device: str, threads: int, readers: int | None = None,
                prefetch: int | None = None) -> tuple[int, int]:
    """(reader threads, batches read ahead) for scoring with ``threads`` inference threads on ``device``.

    On a GPU: up to 8 readers, each a batch ahead (reading overlaps inference). On a CPU with cores left
    beside the inference threads: a reader per spare core (at most 4), overlapped. On a CPU that inference
    already fills: ``threads`` readers read each batch together, then inference runs (``prefetch`` 0) -- on
    2 cores this beat one overlapped reader in all 6 paired runs (by 2-30 %): an overlapped reader preempts
    an inference thread, and the other spins at the next barrier until it is back.
    """
    cpus = available_cpus()
    if device != "cpu":
        readers = readers or max(1, min(8, cpus - 1))
        return readers, readers + 1 if prefetch is None else prefetch
    spare = cpus - threads
    if readers is None:
        readers = min(spare, 4) if spare >= 1 else max(1, threads)
    if prefetch is None:
        prefetch = readers + 1 if readers <= spare else 0
    return readers, prefetch
