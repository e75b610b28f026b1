"""Files the project reads and writes: the one atomic writer and the one list of image extensions.

Every file the library writes (models, exports, reports, histories, galleries, embeddings) goes through
`atomic_output`: the writer fills a temporary path beside the target, named uniquely per writer
(process id + random token), and only a complete result is renamed over the target. Concurrent writers
of one output therefore leave one complete result, readers never see a partial file, a failed write
removes its temporary, and the temporaries of killed writers are removed by the next write of the same output. New files follow the process umask (no `mkstemp`, which would create 0600 files).

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_atomically(folder / "notes.txt", "hello\\n").read_text()
    'hello\\n'
    >>> with atomic_output(folder / "numbers.bin") as temporary:
    ...     _ = temporary.write_bytes(b"\\x00\\x01")
    >>> (folder / "numbers.bin").read_bytes()
    b'\\x00\\x01'
    >>> sorted(path.name for path in folder.iterdir())
    ['notes.txt', 'numbers.bin']
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Callable, Union
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ghostface_keras.core.errors import DataError

# Image files the library reads, everywhere: alignment, calibration, evaluation folders and training folders.
# PIL reads all of them; the training pipeline decodes the same set.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".pnm", ".tif", ".tiff")

_PARTIAL_MARK = ".partial"

Content = Union[bytes, str, Callable[[Path], object]]


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a name with one of `IMAGE_EXTENSIONS` (case-insensitive) that is not a hidden/partial file.

    Example:
        >>> is_image_file("a/B.JPG"), is_image_file("notes.txt"), is_image_file(".photo.jpg.1a2b.partial.jpg")
        (True, False, False)
    """
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under `folder` (sub-folders too unless `recursive=False`), sorted by path.

    Raises:
        DataError: `folder` is not a directory.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("bob/2.png", "alice/1.jpg", "alice/notes.txt"):
        ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_bytes(b"")
        >>> [str(path.relative_to(root)) for path in list_images(root)]
        ['alice/1.jpg', 'bob/2.png']
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(path for path in candidates if is_image_file(path) and path.is_file())


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh, unique sibling name for writing `path`: `.<name>.<pid>-<token>.partial<suffix>`.

    The suffix is kept because some writers infer the format from it (`.keras`, `.npz`, `.png`).
    """
    target = Path(path)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return target.with_name(f".{target.name}.{token}{_PARTIAL_MARK}{target.suffix}")


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed writers of `path` left behind (their process id is in the name and no
    longer runs); a live writer's temporary is kept. Returns what was removed.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "model.keras"
        >>> _ = target.with_name(".model.keras.999999999-0a1b2c3d.partial.keras").write_bytes(b"")  # a dead pid
        >>> [path.name for path in remove_stale_partials(target)]
        ['.model.keras.999999999-0a1b2c3d.partial.keras']
    """
    target = Path(path)
    removed = []
    for candidate in target.parent.glob(f".{glob_escape(target.name)}.*{_PARTIAL_MARK}*"):
        token = candidate.name[len(target.name) + 2:].split(".", 1)[0]
        pid = token.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _writer_alive(int(pid)):
            _remove(candidate)
            removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    """`name` with glob wildcards escaped (file names may hold `[`, `*` or `?`)."""
    return "".join(f"[{character}]" if character in "[]*?" else character for character in name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _replace(temporary: Path, target: Path) -> None:
    if temporary.is_dir() and target.is_dir() and not target.is_symlink():
        # a folder (SavedModel) cannot be renamed over a non-empty folder: move the old one aside first
        retired = temporary_path(target)
        os.replace(target, retired)
        os.replace(temporary, target)
        _remove(retired)
        return
    os.replace(temporary, target)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Write to the yielded temporary path; on success it becomes `path`, on any failure it is removed.

    Works for files and for folders (a SavedModel): whatever the writer created at the temporary path is
    renamed over `path` in one step. Parent folders are created.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out" / "model.bin"
        >>> with atomic_output(target) as temporary:
        ...     _ = temporary.write_bytes(b"weights")
        >>> target.read_bytes()
        b'weights'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)  # what a killed earlier writer left (a SIGKILL skips every cleanup)
    temporary = temporary_path(target)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"{target}: the writer produced nothing")
        _replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


def write_atomically(path: str | os.PathLike, content: Content) -> Path:
    """Write `content` (bytes, text as UTF-8, or a function that writes the path it is given) to `path`
    atomically (see `atomic_output`) and return `path`.

    Example:
        >>> import tempfile, pathlib, json
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "config.json"
        >>> _ = write_atomically(target, lambda temporary: temporary.write_text(json.dumps({"epochs": 2})))
        >>> json.loads(target.read_text())
        {'epochs': 2}
    """
    target = Path(path)
    with atomic_output(target) as temporary:
        if isinstance(content, bytes):
            temporary.write_bytes(content)
        elif isinstance(content, str):
            temporary.write_text(content, encoding="utf-8")
        else:
            content(temporary)
    return target


def check_regular_file(path: str | os.PathLike, kind: str = "file") -> None:
    """Refuse, before anything opens it, a path that is not a regular file: a FIFO (reading one blocks until a
    writer comes, so a command would hang), a device, a socket or a folder. Symbolic links are followed. A
    missing path is left to the reader (it says "not found" in its own words).

    Example:
        >>> check_regular_file("/dev/null")
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.DataError: /dev/null: is a character device, not a regular file
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({describe_os_error(error)})") from None
    if stat.S_ISREG(mode):
        return
    what = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    raise DataError(f"{path}: is {what}, not a regular file" + ("" if kind == "file" else f"; a {kind} was expected"))


def check_input_paths(paths: Iterable[tuple[str | os.PathLike | None, str]]) -> None:
    """Refuse missing inputs before any model loads: `(path, kind)` pairs, where a kind ending in "file" must
    be a file, one ending in "folder" a folder, and any other ("gallery folder or .npz") just exist; None
    paths (options not given) are skipped.

    Example:
        >>> check_input_paths([(None, "file"), (".", "folder")])
        >>> check_input_paths([("no/such/lfw.bin", "file")])
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.DataError: no/such/lfw.bin: file not found
    """
    for path, kind in paths:
        if path is None:
            continue
        target = Path(path)
        if not target.exists():
            raise DataError(f"{path}: {kind} not found")
        if kind.endswith("file") and target.is_dir():
            raise DataError(f"{path}: is a folder; a {kind} was expected")
        if kind.endswith("file"):
            check_regular_file(target, kind)
        if kind.endswith("folder") and not target.is_dir():
            raise DataError(f"{path}: is a file; a {kind} was expected")


def check_output_path(path: str | os.PathLike, kind: str = "file") -> None:
    """Refuse, before any work, an output that could not be written: a file output that is an existing
    folder (or a folder output that is a file), or a path whose nearest existing parent is a file or a
    folder we may not write in.

    Example:
        >>> check_output_path("results/new_run", "folder")      # created later: fine
        >>> check_output_path(".", "file")
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.DataError: .: is a folder; give a file name
    """
    target = Path(path)
    if kind == "file" and target.is_dir():
        raise DataError(f"{path}: is a folder; give a file name")
    if kind == "folder" and target.exists() and not target.is_dir():
        raise DataError(f"{path}: is a file; give a folder")
    existing = target if kind == "folder" else target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise DataError(f"{path}: cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{path}: cannot be written: no permission to write in {existing}")


# a member of a .npz may unpack to at most this many times its compressed size: embeddings and weights compress
# by less than 2x, while a zip bomb of zeros unpacks 1000x
_MAX_NPZ_EXPANSION = 20


def load_npz(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a `.npz` file (those in `names`, or all), without pickles, each checked before it is
    allocated: the size its header declares must fit the bytes the archive holds for it (a 1 KB file may declare
    a 200 GB array, or unpack 1000x). Any problem is one `DataError` naming the file.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "arrays.npz")
        >>> np.savez(path, a=np.arange(3), b=np.eye(2))
        >>> sorted(load_npz(path)), load_npz(path, ["a"])["a"].tolist()
        (['a', 'b'], [0, 1, 2])
    """
    arrays = {}
    check_regular_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
            for name in (names if names is not None else list(members)):
                if name not in members:
                    raise DataError(f"{path}: no array {name!r} (it holds {sorted(members)})")
                info = members[name]
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                declared = math.prod(shape) * dtype.itemsize
                if dtype.hasobject:
                    raise DataError(f"{path}: array {name!r} holds Python objects, which are not loaded")
                if declared > info.file_size or info.file_size > _MAX_NPZ_EXPANSION * info.compress_size + 4096:
                    raise DataError(f"{path}: array {name!r} declares {declared:,} bytes ({shape}) but the file holds "
                                    f"{info.compress_size:,} for it: truncated, corrupt or a decompression bomb")
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as error:
        raise DataError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None
    return arrays


def describe_os_error(error: OSError) -> str:
    """'<file>: <reason>' for an operating-system error (disk full, permission, a folder where a file goes).

    Example:
        >>> describe_os_error(IsADirectoryError(21, "Is a directory", "out/model.tflite"))
        'out/model.tflite: Is a directory'
    """
    name = error.filename if error.filename is not None else ""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{name}: {reason}" if name else reason
