"""insightface MXNet RecordIO (`train.rec` + `train.idx` + `property`) read in pure Python, no mxnet.

Container (dmlc-core, little-endian): each record part is `uint32 magic 0xCED7230A`, `uint32 lrecord`
(top 3 bits: continuation flag, 0 whole / 1 first / 2 middle / 3 last; low 29 bits: length), the
payload, zero padding to 4 bytes. A record the writer had to split (its payload held the magic word
at an aligned offset) is rebuilt by joining the parts with the magic word between them.

Payload: IRHeader `<IfQQ` (flag, label, id, id2; 24 bytes), then `flag` float32 labels if flag > 0,
then the data. insightface convention: record 0 has labels [L0, L1]; keys 1..L0-1 are images, keys
L0..L1-1 are identities whose labels are their image key range [start, end).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from ghostface_keras.data.pipeline import ImageSource, build_dataset
from ghostface_keras.core.errors import DataError

MAGIC = 0xCED7230A
LENGTH_MASK = (1 << 29) - 1
IR_HEADER = struct.Struct("<IfQQ")


@dataclass(frozen=True)
class RecordHeader:
    """The IRHeader of one record: `label` is a float, or a tuple when the record stores several."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


class RecordIOReader:
    """Random access to an indexed RecordIO file; thread-safe (reads use `os.pread`).

    Example:
        >>> with RecordIOReader("faces_emore/") as reader:        # doctest: +SKIP
        ...     header, jpeg = reader.read_record(1)
        ...     reader.num_images, reader.num_classes
    """

    def __init__(self, path: str | os.PathLike):
        self._fd = None  # set first: __del__ runs even when opening fails
        self.rec_path, self.idx_path = _locate(Path(path))
        self._fd = os.open(self.rec_path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self.offsets = _read_index(self.idx_path) if self.idx_path else self._scan_offsets()

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    @property
    def keys(self) -> list[int]:
        return list(self.offsets)

    def read_payload(self, key: int) -> bytes:
        """The payload of record `key` (parts joined), or `DataError` naming the file, key and offset."""
        if key not in self.offsets:
            raise DataError(f"{self.rec_path}: no record with key {key} in {self.idx_path or 'the file'}")
        offset = start = self.offsets[key]
        parts: list[bytes] = []
        while True:
            flag, length = self._part_header(offset, f"record key {key}: ")
            data = os.pread(self._fd, length, offset + 8)
            if len(data) < length:
                raise DataError(f"{self.rec_path}: record key {key} at byte offset {start} is truncated: {length} bytes announced, {len(data)} present")
            parts.append(data)
            offset += 8 + length + (-length % 4)
            if flag in (0, 3):
                break
            if flag not in (1, 2):
                raise DataError(f"{self.rec_path}: record key {key}: invalid part flag {flag} at byte offset {offset}")
        return struct.pack("<I", MAGIC).join(parts)

    def read_record(self, key: int) -> tuple[RecordHeader, bytes]:
        """`(header, data)` of record `key`; data is the encoded image for image records."""
        return unpack_payload(self.read_payload(key), f"{self.rec_path} record key {key} at byte offset {self.offsets.get(key)}")

    def _part_header(self, offset: int, context: str = "") -> tuple[int, int]:
        """`(flag, payload length)` of the record part at `offset`, or `DataError` naming file, `context`, offset."""
        head = os.pread(self._fd, 8, offset)
        if len(head) < 8:
            raise DataError(f"{self.rec_path}: {context}truncated record header at byte offset {offset} (file is {self._size} bytes)")
        magic, lrecord = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DataError(f"{self.rec_path}: {context}bad magic 0x{magic:08X} at byte offset {offset} (corrupt file or wrong .idx)")
        return lrecord >> 29, lrecord & LENGTH_MASK

    def _scan_offsets(self) -> dict[int, int]:
        """Without a .idx file: walk the records in order and number them 0, 1, 2... as they come."""
        offsets: dict[int, int] = {}
        offset, key, continuing = 0, 0, False
        while offset < self._size:
            flag, length = self._part_header(offset)
            if not continuing:
                offsets[key] = offset
                key += 1
            continuing = flag in (1, 2)
            offset += 8 + length + (-length % 4)
        return offsets

    # insightface layout -------------------------------------------------------------------------------

    def _check_key_range(self, start: int, end: int, where: str) -> None:
        if not 0 <= start <= end or end - start > len(self.offsets):
            raise DataError(f"{self.rec_path}: {where} announces keys [{start}, {end}), but the index holds "
                            f"{len(self.offsets)} records (corrupt file or wrong .idx)")

    def image_labels(self) -> tuple[list[int], np.ndarray]:
        """Keys of the image records and their class labels, following insightface's conventions.

        With the identity records of record 0 (`[L0, L1]`) the labels come from the identity key
        ranges; otherwise every record's header is read and `label` (or `label[0]`) is used.
        """
        header, _ = self.read_record(0) if 0 in self.offsets else (None, b"")
        if header is not None and header.flag > 0 and isinstance(header.label, tuple) and len(header.label) >= 2:
            first_identity, end_identity = int(header.label[0]), int(header.label[1])
            # ranges read from the file are checked against the index before any list is built from them: a
            # few corrupt bytes could otherwise announce billions of keys
            self._check_key_range(first_identity, end_identity, "record 0 (the identity list)")
            keys: list[int] = []
            labels: list[int] = []
            for class_index, identity_key in enumerate(range(first_identity, end_identity)):
                identity, _ = self.read_record(identity_key)
                start, end = _label_pair(identity, f"{self.rec_path} identity record key {identity_key}")
                self._check_key_range(start, end, f"identity record key {identity_key}")
                keys.extend(range(start, end))
                labels.extend([class_index] * (end - start))
            if keys:
                return keys, np.asarray(labels, dtype=np.int32)
            keys = list(range(1, first_identity))
        else:
            keys = [key for key in self.offsets if key != 0 or header is None or header.flag == 0]
        labels = [_class_of(self.read_record(key)[0]) for key in keys]
        return keys, np.asarray(labels, dtype=np.int32)


def unpack_payload(payload: bytes, where: str = "record") -> tuple[RecordHeader, bytes]:
    """Split a record payload into its IRHeader and data (`mx.recordio.unpack` without mxnet).

    Example:
        >>> header, data = unpack_payload(struct.pack("<IfQQ", 0, 3.0, 7, 0) + b"jpeg")
        >>> header.label, header.id, data
        (3.0, 7, b'jpeg')
    """
    if len(payload) < IR_HEADER.size:
        raise DataError(f"{where}: payload of {len(payload)} bytes is shorter than the 24-byte IRHeader")
    flag, label, record_id, record_id2 = IR_HEADER.unpack_from(payload)
    data_start = IR_HEADER.size
    if flag > 0:
        data_start += 4 * flag
        if len(payload) < data_start:
            raise DataError(f"{where}: header announces {flag} labels but the payload is too short")
        label = tuple(float(value) for value in np.frombuffer(payload, "<f4", flag, IR_HEADER.size))
    return RecordHeader(flag, label, record_id, record_id2), payload[data_start:]


def _label_pair(header: RecordHeader, where: str) -> tuple[int, int]:
    if not isinstance(header.label, tuple) or len(header.label) < 2:
        raise DataError(f"{where}: expected an identity record with labels [start, end), got {header.label!r}")
    return int(header.label[0]), int(header.label[1])


def _class_of(header: RecordHeader) -> int:
    return int(header.label[0] if isinstance(header.label, tuple) else header.label)


def _locate(path: Path) -> tuple[Path, Path | None]:
    """Accept a folder holding train.rec/.idx, a .rec file, or a .idx file."""
    if path.is_dir():
        recs = sorted(path.glob("*.rec"))
        preferred = path / "train.rec"
        if not recs:
            raise DataError(f"{path}: no .rec file in this folder (expected train.rec, train.idx, property)")
        rec = preferred if preferred in recs else recs[0]
    elif path.suffix == ".idx":
        rec = path.with_suffix(".rec")
    else:
        rec = path
    if not rec.is_file():
        raise DataError(f"{rec}: RecordIO file not found")
    idx = rec.with_suffix(".idx")
    return rec, (idx if idx.is_file() else None)


def _read_index(idx_path: Path) -> dict[int, int]:
    offsets: dict[int, int] = {}
    with open(idx_path, encoding="ascii", errors="replace") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                offsets[int(fields[0])] = int(fields[1])
            except (ValueError, IndexError):
                raise DataError(f"{idx_path}: line {line_number} is not '<key>\\t<byte offset>': {line.strip()[:60]!r}") from None
    if not offsets:
        raise DataError(f"{idx_path}: empty index")
    return offsets


def read_property(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """`(num_classes, height, width)` from the `property` file beside the .rec, or None if absent."""
    rec, _ = _locate(Path(path))
    prop = rec.parent / "property"
    if not prop.is_file():
        return None
    with open(prop, "rb") as handle:
        text = handle.read(200).decode("utf-8", errors="replace")  # a few bytes are all a property file holds
    try:
        classes, height, width = (int(value) for value in text.strip().split(","))
    except ValueError:
        raise DataError(f"{prop}: expected 'num_classes,height,width', got {text[:60]!r}") from None
    if classes < 1 or not (1 <= height <= 4096 and 1 <= width <= 4096):
        raise DataError(f"{prop}: {classes} classes of {height}x{width} images is not a face dataset's property")
    return classes, height, width


def recordio_source(path: str | os.PathLike) -> ImageSource:
    """The `ImageSource` of an insightface RecordIO dataset (labels named by class index)."""
    reader = RecordIOReader(path)
    keys, labels = reader.image_labels()
    if not keys:
        raise DataError(f"{reader.rec_path}: no image records found")
    num_classes = int(labels.max()) + 1
    prop = read_property(path)
    if prop is not None and prop[0] > len(keys):
        # checked before the class names are built: a 17-byte property must not cost gigabytes
        raise DataError(f"{reader.rec_path.parent / 'property'}: declares {prop[0]} classes but the index holds only "
                        f"{len(keys)} images (every class has at least one); wrong property file?")
    if prop is not None and prop[0] > num_classes:
        num_classes = prop[0]  # classes with no images still own a label (the head must have their rows)

    def read_bytes(item: int) -> bytes:
        return reader.read_record(keys[item])[1]

    return ImageSource(
        name=str(reader.rec_path),
        labels=labels,
        class_names=[str(index) for index in range(num_classes)],
        read_bytes=read_bytes,
        describe=lambda item: f"{reader.rec_path} record key {keys[item]}",
    )


def recordio_dataset(
    path: str | os.PathLike,
    batch_size: int,
    image_size: int = 112,
    augment=None,
    shuffle: bool = True,
    seed: int | None = None,
    cache: bool | str = "auto",
    drop_remainder: bool = False,
    normalize: bool = True,
    num_shards: int = 1,
    shard_index: int = 0,
) -> tf.data.Dataset:
    """Training batches from insightface RecordIO (`train.rec`/`train.idx`), same output as `image_folder_dataset`.

    `path` is the folder holding `train.rec` (and `train.idx`, `property`) or the `.rec` file itself.
    The dataset's `class_names` are the class indices as strings ("0", "1", ...). `num_shards` and
    `shard_index` give this process its slice of every global batch (see `build_dataset`).

    Example:
        >>> dataset = recordio_dataset("faces_emore/", batch_size=128, augment="brightness")  # doctest: +SKIP
        >>> dataset.num_classes                                                                # doctest: +SKIP
        85742
    """
    return build_dataset(
        recordio_source(path), batch_size, image_size, augment, shuffle, seed, cache, drop_remainder, normalize,
        num_shards=num_shards, shard_index=shard_index,
    )
