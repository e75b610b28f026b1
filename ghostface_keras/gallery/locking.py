"""The one-writer lock of a gallery folder: an exclusive `flock` on its `.lock` file, waited for up to a timeout
and then refused in one line. The kernel releases it when the holder dies (SIGKILL included), so a crashed writer
never leaves the gallery locked.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> with exclusive_lock(folder, timeout=1.0):
    ...     (folder / ".lock").exists()
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from collections.abc import Iterator

from ghostface_keras.core.errors import DataError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def exclusive_lock(folder: Path, timeout: float) -> Iterator[None]:
    """Hold `folder/.lock` exclusively; wait up to `timeout` seconds for another holder, then raise `DataError`."""
    with open(Path(folder) / LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DataError(f"{folder}: another process is changing this gallery (waited {timeout:.0f} s); "
                                    "try again when it is done") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
