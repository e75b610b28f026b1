"""Cross-request batching of model calls: `MicroBatcher` merges the rows that concurrent threads hand it into one call.

Why: the HTTP service answers each request on its own thread, and each request embeds one or two aligned crops.
A batch-1 call of a real face model costs nearly as much wall time as a batch-8 call (the convolutions use the
cores better on more rows), so 8 concurrent clients making 8 batch-1 calls one after another wait for each other
for nothing. Here one thread owns the model: it takes the first waiting request, gathers the requests that
arrive within `window_ms` (or until `max_batch` rows), makes one call on all their rows and hands each request
exactly its own rows back. Measured in benchmarks/results/http_serve.md (`python benchmarks/http_serve.py`).

Guarantees (tests/test_batching.py):
- a request's rows are checked (`check`) on its own thread before they are queued, so a malformed request is its
  own error and never reaches a batch;
- a failed call on a merged batch is retried request by request, so an error (a NaN embedding refuses the call)
  goes back to the request that caused it only; the batcher thread keeps going;
- at most `max_pending` requests wait in the queue; a caller finding it full waits up to `wait_s` for a place,
  then gets `BatcherBusy` (memory stays bounded whatever the load);
- `close()` answers every request already queued, refuses new ones with `BatcherClosed`, and ends the thread.

`embedding_batcher(embedder)` builds one on `FaceEmbedder.embed_aligned` (the one embedding path: flip,
normalization, NaN check) and `batched_embedder(embedder, batcher)` is the embedder whose every embedding call
(`compare`, `identify_faces`, `embed_batch`, the protocol's embed) goes through it.

Example:
    >>> import numpy as np
    >>> with MicroBatcher(lambda rows: rows * 2, window_ms=1) as double:   # any rows -> rows function
    ...     double(np.arange(3.0)[:, None]).ravel().tolist()
    [0.0, 2.0, 4.0]
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ghostface_keras.core.errors import GhostFaceError

logger = logging.getLogger(__name__)

# how long the batcher waits for more requests after the first: a few ms against a model call of tens of ms
DEFAULT_WINDOW_MS = 2.0
# requests waiting for the model at most (the HTTP thread pool holds 40 request threads: this is never reached
# there); each holds only references to crops its request already holds
DEFAULT_MAX_PENDING = 256
# how long a caller waits for a place in a full queue before `BatcherBusy`
DEFAULT_WAIT_S = 30.0

CLOSED_MESSAGE = "server shutting down: no more requests are taken"

RowFunction = Callable[[np.ndarray], np.ndarray]


class BatcherBusy(GhostFaceError, RuntimeError):
    """The queue stayed full for `wait_s`: the model cannot keep up; the request may be retried later (the HTTP
    service answers 503: its message starts with "server busy")."""


class BatcherClosed(GhostFaceError, RuntimeError):
    """The batcher was closed (the server is shutting down); no more rows are taken (HTTP 503, "server shutting
    down")."""


@dataclass
class _Request:
    rows: np.ndarray
    result: concurrent.futures.Future


_STOP = object()  # queued by close(): everything queued before it is answered, then the thread ends


class MicroBatcher:
    """Run `function` (rows (N, ...) -> outputs (N, ...)) on the rows of concurrent callers, merged.

    Args:
        function: called on the batcher's own thread only, so it needs no lock (LiteRT and TensorFlow runners
            alike); output row i must belong to input row i.
        window_ms: after the first waiting request, how long to gather more (0: only those already waiting).
        max_batch: rows per call at most; a request with more rows than this is called alone, never split.
        max_pending: requests waiting at most (see `BatcherBusy`).
        check: validates one request's rows on the caller's thread before queueing (raise to refuse them);
            returns the rows as an array.
        wait_s: how long a caller waits for a place in a full queue.
        expected: how many callers may hand rows now (the HTTP service: its embedding requests in progress); the
            batcher stops gathering as soon as its batch holds that many requests, so a lone request is called at
            once instead of waiting out the window for company that is not coming.

    Calling the batcher (`batcher(rows)`) blocks until that request's outputs are ready and returns them, or
    raises the error its rows caused.

    Example:
        >>> import numpy as np
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> calls = []
        >>> def model(rows):                  # a stand-in model that records the size of each call
        ...     calls.append(len(rows))
        ...     return rows.sum(axis=1, keepdims=True)
        >>> batcher = MicroBatcher(model, window_ms=200, max_batch=64)
        >>> with ThreadPoolExecutor(8) as pool:                 # 8 requests at once, 2 rows each
        ...     answers = list(pool.map(batcher, [np.full((2, 3), n) for n in range(8)]))
        >>> [answer.ravel().tolist() for answer in answers[:2]]  # each request gets its own rows back
        [[0, 0], [3, 3]]
        >>> sum(calls), len(calls) < 8                           # 16 rows in fewer than 8 calls
        (16, True)
        >>> batcher.close()
        >>> batcher(np.zeros((1, 3)))
        Traceback (most recent call last):
        ...
        ghostface_keras.serve.batching.BatcherClosed: server shutting down: no more requests are taken
    """

    def __init__(self, function: RowFunction, window_ms: float = DEFAULT_WINDOW_MS, max_batch: int = 32,
                 max_pending: int = DEFAULT_MAX_PENDING, check: Callable[[Any], np.ndarray] | None = None,
                 wait_s: float = DEFAULT_WAIT_S, name: str = "model batcher",
                 expected: Callable[[], int] | None = None) -> None:
        if window_ms < 0 or max_batch < 1 or max_pending < 1:
            raise ValueError(f"window_ms must be >= 0, max_batch and max_pending >= 1; got {window_ms}, {max_batch}, "
                             f"{max_pending}")
        self.function, self.check, self.expected = function, check, expected
        self.window_s, self.max_batch, self.max_pending, self.wait_s = window_ms / 1e3, int(max_batch), \
            int(max_pending), float(wait_s)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # the bound: a place is taken before queueing and given back when the batcher thread takes the request
        self._places = threading.BoundedSemaphore(self.max_pending)
        # queueing and closing take turns, so no request can be queued behind _STOP and never be answered
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0  # requests queued, not yet taken (under _lock)
        # a daemon: a batcher nobody closed must not keep the process alive
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the callers' side ---------------------------------------------------------------------------
    def __call__(self, rows: Any) -> np.ndarray:
        rows = self.check(rows) if self.check is not None else np.asarray(rows)
        if rows.ndim < 1:
            raise ValueError(f"rows must be an array of at least one dimension, got shape {rows.shape}")
        if self._closed:  # before waiting for a place in a queue that nobody will drain
            raise BatcherClosed(CLOSED_MESSAGE)
        if not self._places.acquire(timeout=self.wait_s):
            raise BatcherBusy(f"server busy: {self.max_pending} requests already wait for the model; "
                              "try again later")
        request = _Request(rows, concurrent.futures.Future())
        with self._lock:
            if self._closed:
                self._places.release()
                raise BatcherClosed(CLOSED_MESSAGE)
            self._queue.put(request)
            self._pending += 1
        return request.result.result()

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken by the batcher thread."""
        return self._pending

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 30.0) -> None:
        """Answer the requests already queued, refuse new ones, end the thread (waiting up to `timeout` s)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the model batcher did not finish its last call within %.0f s", timeout)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- the batcher thread ---------------------------------------------------------------------------
    def _take(self, block: bool = True, timeout: float | None = None) -> Any:
        item = self._queue.get(block, timeout)
        if item is not _STOP:
            with self._lock:
                self._pending -= 1
            self._places.release()
        return item

    def _run(self) -> None:
        held = None  # a request taken while gathering that did not fit: it opens the next batch
        while True:
            first = held if held is not None else self._take()
            held = None
            if first is _STOP:
                return
            batch, rows = [first], len(first.rows)
            deadline = time.monotonic() + self.window_s
            while rows < self.max_batch and (self.expected is None or len(batch) < self.expected()):
                left = deadline - time.monotonic()
                try:
                    item = self._take(left > 0, left if left > 0 else None)
                except queue.Empty:
                    break
                # rows are merged only when concatenating them changes nothing (same row shape and type)
                if item is _STOP or rows + len(item.rows) > self.max_batch or \
                        item.rows.shape[1:] != first.rows.shape[1:] or item.rows.dtype != first.rows.dtype:
                    held = item
                    break
                batch.append(item)
                rows += len(item.rows)
            self._answer(batch)

    def _answer(self, batch: list[_Request]) -> None:
        try:
            rows = batch[0].rows if len(batch) == 1 else np.concatenate([request.rows for request in batch])
            outputs = self.function(rows)
            if len(outputs) != len(rows):
                raise RuntimeError(f"the batched function returned {len(outputs)} rows for {len(rows)}")
        except Exception as error:  # noqa: BLE001 - handed to the request(s), never out of the thread
            if len(batch) == 1:
                batch[0].result.set_exception(error)
                return
            # one request's rows may be what failed (a NaN embedding refuses the whole call): call each alone, so
            # the error reaches that request only (errors are rare; the retry costs only then)
            logger.debug("a merged call of %d requests failed; retrying each alone", len(batch), exc_info=error)
            for request in batch:
                self._answer([request])
            return
        start = 0
        for request in batch:
            request.result.set_result(outputs[start:start + len(request.rows)])
            start += len(request.rows)


def embedding_batcher(embedder: Any, window_ms: float = DEFAULT_WINDOW_MS, max_batch: int | None = None,
                      **options: Any) -> MicroBatcher:
    """A `MicroBatcher` of `embedder.embed_aligned` (a `FaceEmbedder`: aligned uint8 crops -> unit embeddings),
    checking each request's crops with `embedder.check_crops`; `max_batch` defaults to the embedder's batch size,
    so one merged batch is one model call."""
    return MicroBatcher(embedder.embed_aligned, window_ms, max_batch or embedder.batch_size,
                        check=embedder.check_crops, name="embedding batcher", **options)


def batched_embedder(embedder: Any, batcher: MicroBatcher) -> Any:
    """A shallow copy of `embedder` (the same model, detector, thresholds and detector lock) whose `embed_aligned`
    goes through `batcher`: all its methods embed through that one method, so they all share model calls.

    Example:
        >>> import keras
        >>> from ghostface_keras.faces.embedder import FaceEmbedder
        >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> embedder = FaceEmbedder(model, detector=None)
        >>> with embedding_batcher(embedder) as batcher:
        ...     shared = batched_embedder(embedder, batcher)
        ...     shared.embed(np.zeros((112, 112, 3), np.uint8)).shape, shared.model is embedder.model
        ((32,), True)
    """
    view = copy.copy(embedder)
    view.embed_aligned = batcher  # an instance attribute: the class's method stays the batcher's function
    return view
