"""The one progress bar of long library work (embedding, alignment, decoding, calibration).

It draws on stderr, and only when stderr is a terminal (or when asked with `force=True`): piped or logged
output (`ghostface identify ... | head`, CI logs) stays free of carriage returns and escape codes.
`model.fit` keeps Keras' own progress bar.

Example:
    >>> import io
    >>> stream = io.StringIO()
    >>> bar = ProgressBar(4, "photo", stream=stream, force=True)
    >>> bar.update(2); bar.update(4)
    >>> stream.getvalue().splitlines()[-1].split(" [")[0]
    '4/4 photos'
    >>> ProgressBar(4, "photo", stream=io.StringIO()).enabled    # not a terminal: silent
    False
"""

from __future__ import annotations

import sys
import time
from typing import IO


class ProgressBar:
    """`update(done)` redraws `done/total units [elapsed, rate]`; a newline when `done` reaches `total`."""

    def __init__(self, total: int | None, unit: str = "image", stream: IO[str] | None = None,
                 force: bool = False) -> None:
        self.total, self.unit = total, unit
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(force or (callable(isatty) and isatty()))
        self.started = time.monotonic()
        self._last_draw = 0.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        finished = self.total is not None and done >= self.total
        if not finished and now - self._last_draw < 0.1:  # at most ten redraws a second
            return
        self._last_draw = now
        elapsed = max(now - self.started, 1e-9)
        of_total = f"/{self.total}" if self.total is not None else ""
        self.stream.write(f"\r{done}{of_total} {self.unit}s [{elapsed:.0f} s, {done / elapsed:.1f} {self.unit}s/s]")
        if finished:
            self.stream.write("\n")
        self.stream.flush()
