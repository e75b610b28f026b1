"""Pure-Python RecordIO: container parsing (incl. split records), errors, insightface layout, rec_to_folders."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ghostface_keras.data import RecordIOReader, recordio_dataset
from ghostface_keras.core.errors import DataError

PROJECT = Path(__file__).resolve().parents[1]
MAGIC = struct.pack("<I", 0xCED7230A)


def _parts(payload: bytes):
    """Split a payload the way dmlc's writer does: at every 4-byte-aligned magic word (which is dropped)."""
    pieces, start = [], 0
    for offset in range(0, len(payload) - 3, 4):
        if payload[offset : offset + 4] == MAGIC and offset >= start:
            pieces.append(payload[start:offset])
            start = offset + 4
    pieces.append(payload[start:])
    return pieces


def _encode_record(payload: bytes) -> bytes:
    pieces = _parts(payload)
    out = b""
    for number, piece in enumerate(pieces):
        flag = 0 if len(pieces) == 1 else (1 if number == 0 else (3 if number == len(pieces) - 1 else 2))
        out += MAGIC + struct.pack("<I", (flag << 29) | len(piece)) + piece + b"\0" * (-len(piece) % 4)
    return out


def _header(flag, label, key, extra=()):
    return struct.pack("<IfQQ", flag, label, key, 0) + b"".join(struct.pack("<f", value) for value in extra)


def _write_dataset(folder: Path, images_per_class=(2, 3), with_idx=True, split_key=None):
    """An insightface-layout RecordIO written independently of the reader under test."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    payloads, jpegs, key = {}, {}, 1
    ranges = []
    for label, count in enumerate(images_per_class):
        start = key
        for _ in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buffer, "PNG")
            data = buffer.getvalue()
            if key == split_key:  # force the writer to split this record
                data = data[:8] + b"\0" * (-(24 + 8) % 4) + MAGIC + b"tail" + MAGIC + data[8:]
            payloads[key], jpegs[key] = _header(0, float(label), key) + data, data
            key += 1
        ranges.append((start, key))
    first_identity = key
    for number, (start, end) in enumerate(ranges):
        payloads[first_identity + number] = _header(2, 0.0, first_identity + number, (start, end))
    payloads[0] = _header(2, 0.0, 0, (first_identity, first_identity + len(ranges)))
    blob, index = b"", []
    for record_key in sorted(payloads):
        index.append(f"{record_key}\t{len(blob)}\n")
        blob += _encode_record(payloads[record_key])
    (folder / "train.rec").write_bytes(blob)
    if with_idx:
        (folder / "train.idx").write_text("".join(index))
    (folder / "property").write_text(f"{len(ranges)},112,112")
    return jpegs


def test_reader_returns_payloads_and_insightface_labels(tmp_path):
    jpegs = _write_dataset(tmp_path / "rec", split_key=3)
    with RecordIOReader(tmp_path / "rec") as reader:
        keys, labels = reader.image_labels()
        assert keys == [1, 2, 3, 4, 5] and labels.tolist() == [0, 0, 1, 1, 1]
        for key in keys:  # including key 3, stored as several parts
            header, data = reader.read_record(key)
            assert data == jpegs[key] and header.id == key


def test_reader_without_idx_scans_sequentially(tmp_path):
    jpegs = _write_dataset(tmp_path / "rec", with_idx=False, split_key=2)
    with RecordIOReader(tmp_path / "rec" / "train.rec") as reader:
        keys, labels = reader.image_labels()
        assert labels.tolist() == [0, 0, 1, 1, 1]
        assert [reader.read_record(key)[1] for key in keys] == [jpegs[k] for k in range(1, 6)]


def test_truncated_record_names_file_key_and_offset(tmp_path):
    _write_dataset(tmp_path / "rec")
    rec = tmp_path / "rec" / "train.rec"
    offsets = dict(line.split("\t") for line in (tmp_path / "rec" / "train.idx").read_text().splitlines())
    cut = int(offsets["4"]) + 40
    rec.write_bytes(rec.read_bytes()[:cut])
    with RecordIOReader(tmp_path / "rec") as reader:
        with pytest.raises(DataError, match=rf"train.rec: record key 4 at byte offset {offsets['4']} is truncated"):
            reader.read_record(4)


def test_wrong_offset_is_a_bad_magic_error(tmp_path):
    _write_dataset(tmp_path / "rec")
    idx = tmp_path / "rec" / "train.idx"
    idx.write_text(idx.read_text().replace("\n", "\n", 1).replace("1\t", "1\t1", 1))
    with RecordIOReader(tmp_path / "rec") as reader:
        with pytest.raises(DataError, match="record key 1: bad magic"):
            reader.read_record(1)


def test_recordio_dataset_yields_the_stored_pixels(tmp_path):
    jpegs = _write_dataset(tmp_path / "rec")
    dataset = recordio_dataset(tmp_path / "rec", batch_size=5, shuffle=False, normalize=False)
    images, labels = next(iter(dataset))
    assert dataset.num_classes == 2 and labels.numpy().tolist() == [0, 0, 1, 1, 1]
    expected = np.stack([np.asarray(Image.open(io.BytesIO(jpegs[key]))) for key in range(1, 6)])
    np.testing.assert_array_equal(images.numpy(), expected)


def _cli(*args):
    """rec_to_folders' main() in-process (a subprocess would pay TensorFlow's import each time)."""
    spec = importlib.util.spec_from_file_location("rec_to_folders_cli", PROJECT / "data_prep" / "rec_to_folders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = module.main([str(arg) for arg in args])
    return code, stdout.getvalue(), stderr.getvalue()


def test_rec_to_folders_is_byte_identical_and_resumable(tmp_path):
    jpegs = _write_dataset(tmp_path / "rec")
    code, _, stderr = _cli(tmp_path / "rec", tmp_path / "out", "--quiet")
    assert code == 0, stderr
    assert (tmp_path / "out" / "1" / "3.png").read_bytes() == jpegs[3]
    (tmp_path / "out" / "0" / "2.png").unlink()
    code, stdout, _ = _cli(tmp_path / "rec", tmp_path / "out", "--quiet")
    assert "1 images written, 4 already present" in stdout
    assert (tmp_path / "out" / "0" / "2.png").read_bytes() == jpegs[2]


def test_rec_to_folders_reports_a_missing_rec_in_one_line(tmp_path):
    code, _, stderr = _cli(tmp_path, tmp_path / "out")
    assert code == 2 and "no .rec file" in stderr and len(stderr.strip().splitlines()) == 1


def _digests(folder: Path):
    return sorted(hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir())


def test_celeba_rec_converts_to_the_first_40_train_identities(data_dir, tmp_path):
    celeba = data_dir / "celeba_aligned112"
    code, _, stderr = _cli(celeba / "rec", tmp_path, "--quiet")
    assert code == 0, stderr
    identities = sorted((celeba / "train").iterdir(), key=lambda path: int(path.name))[:40]
    assert sorted(int(path.name) for path in tmp_path.iterdir()) == list(range(40))
    for label, identity in enumerate(identities):  # byte-identical JPEGs, identity by identity
        assert _digests(tmp_path / str(label)) == _digests(identity)


def test_recordio_dataset_shards_exactly(tmp_path):
    _write_dataset(tmp_path / "rec", images_per_class=(3, 5))
    full = [(images.numpy(), labels.numpy()) for images, labels in recordio_dataset(tmp_path / "rec", 4, augment=2, seed=1, drop_remainder=True)]
    shards = [recordio_dataset(tmp_path / "rec", 4, augment=2, seed=1, num_shards=2, shard_index=index) for index in range(2)]
    parts = [[(images.numpy(), labels.numpy()) for images, labels in shard] for shard in shards]
    assert [int(shard.cardinality()) for shard in shards] == [2, 2] and len(full) == 2
    for batch, (images, labels) in enumerate(full):
        np.testing.assert_array_equal(np.concatenate([part[batch][0] for part in parts]), images)
        np.testing.assert_array_equal(np.concatenate([part[batch][1] for part in parts]), labels)
