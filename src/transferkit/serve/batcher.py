"""Dynamic batching: requests that arrive together share one forward pass.

As TorchServe's ``batch_size`` + ``max_batch_delay``: one worker thread takes the first waiting
request, then gathers more until the batch holds ``max_batch_size`` images or ``max_delay_ms``
has passed since that first request, runs the network once on all of them, and hands each
request its own rows. While the network runs, new requests queue up, so under load batches fill
without waiting; a lone request waits at most ``max_delay_ms``.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import numpy as np

MAX_BATCH_SIZE = 32
"""Most images per forward pass (a request with more runs alone, whole)."""
MAX_DELAY_MS = 5.0
"""How long the first request of a batch waits for company (benchmarks/serve_load.py measured
0, 5 and 20 ms at concurrency 32: see benchmarks/RESULTS.md)."""


_STOP = object()


class Batcher:
    """Run ``forward`` on batches gathered from concurrent :meth:`submit` calls.

    Parameters
    ----------
    forward : callable
        uint8 pixels (N, S, S, 3) -> a sequence of N per-image results (a list or an array whose
        first axis is the image); called in one worker thread, one batch at a time.
    max_batch_size : int
        Images per batch, at least 1.
    max_delay_ms : float
        How long to wait for more requests after the first, in milliseconds (0: take only
        what is already waiting).
    """

    def __init__(self, forward: Callable[[np.ndarray], Sequence[Any]], *, max_batch_size: int = MAX_BATCH_SIZE,
                 max_delay_ms: float = MAX_DELAY_MS) -> None:
        if max_batch_size < 1 or max_delay_ms < 0:
            raise ValueError(f"expected max_batch_size >= 1 and max_delay_ms >= 0. Received: {max_batch_size}, {max_delay_ms}")
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.batches = 0
        self.images = 0
        self._queue: queue.Queue = queue.Queue()
        self._held: tuple[np.ndarray, Future] | None = None  # a request that did not fit the last batch
        self._worker = threading.Thread(target=self._run, name="transferkit-batcher", daemon=True)
        self._worker.start()

    def submit(self, pixels: np.ndarray) -> Future:
        """Queue uint8 (n, S, S, 3) pixels of one request; the future's result is their n results."""
        future: Future = Future()
        self._queue.put((pixels, future))
        return future

    def close(self) -> None:
        """Stop the worker once the requests queued so far are answered."""
        self._queue.put(_STOP)
        self._worker.join(timeout=30)

    def _next(self, timeout: float | None):
        """The next request, :data:`_STOP`, or None when ``timeout`` seconds pass first."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        try:
            return self._queue.get() if timeout is None else self._queue.get(timeout=max(timeout, 1e-6))
        except queue.Empty:
            return None

    def _run(self) -> None:
        while True:
            first = self._next(None)
            if first is _STOP:
                return
            batch, count = [first], len(first[0])
            deadline = time.monotonic() + self.max_delay
            stopping = False
            while count < self.max_batch_size:
                item = self._next(deadline - time.monotonic())
                if item is None:
                    break  # the delay is over: run what we have
                if item is _STOP:
                    stopping = True
                    break
                if count + len(item[0]) > self.max_batch_size:
                    self._held = item  # first of the next batch: a request is never split
                    break
                batch.append(item)
                count += len(item[0])
            self._answer(batch)
            if stopping:
                return

    def _answer(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        live = [(pixels, future) for pixels, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.forward(np.concatenate([pixels for pixels, _ in live]))
        except BaseException as error:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
            for _, future in live:
                future.set_exception(error)
            return
        self.batches += 1
        self.images += sum(len(pixels) for pixels, _ in live)
        start = 0
        for pixels, future in live:
            future.set_result(results[start : start + len(pixels)])
            start += len(pixels)
