"""Our metadata inside a `.tflite` file: which released checkpoint the weights came from.

Quantized files (int8, dynamic range) embed faces too differently from the float model for the weight
signature of `ghostface_keras.weights.checkpoints` to recognize them, so `export_tflite` writes the identity it found
on the Keras model into the flatbuffer's `metadata` list (entry "ghostface_keras", a small JSON document).
Reading it needs no TensorFlow: a bounds-checked walk of the flatbuffer with `struct`, so a phone-side
LiteRT-only install (and a hostile file) is fine.

Example:
    >>> read_tflite_metadata(b"not a flatbuffer") is None
    True
"""

from __future__ import annotations

import json
import struct
from typing import Any

METADATA_NAME = "ghostface_keras"
_MAX_DOCUMENT_BYTES = 64 * 1024

# field numbers in the TFLite schema (tensorflow/lite/schema/schema.fbs)
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class _Reader:
    """Just enough of the flatbuffer wire format to read tables, vectors and strings, every read bounds-checked."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    def _unpack(self, fmt: str, position: int) -> Any:
        if position < 0 or position + struct.calcsize(fmt) > len(self.content):
            raise ValueError("offset outside the file")
        return struct.unpack_from(fmt, self.content, position)[0]

    def root(self) -> int:
        return self._unpack("<I", 0)

    def field(self, table: int, number: int) -> int | None:
        """Position of field `number` of the table at `table`, or None when absent."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        slot = 4 + 2 * number
        if slot + 2 > vtable_size:
            return None
        offset = self._unpack("<H", vtable + slot)
        return table + offset if offset else None

    def indirect(self, position: int) -> int:
        return position + self._unpack("<I", position)

    def vector(self, position: int) -> tuple[int, int]:
        """(start of the elements, length) of the vector referenced at `position`."""
        start = self.indirect(position)
        return start + 4, self._unpack("<I", start)

    def string(self, position: int) -> bytes:
        start, length = self.vector(position)
        if start + length > len(self.content):
            raise ValueError("string outside the file")
        return self.content[start:start + length]

    def scalar(self, table: int, number: int, fmt: str, default: int = 0) -> int:
        position = self.field(table, number)
        return default if position is None else self._unpack(fmt, position)


def read_tflite_metadata(content: bytes) -> dict | None:
    """Our JSON document from a `.tflite` file's bytes, or None (no entry, or not a readable flatbuffer).

    Example:
        >>> read_tflite_metadata(b"\\x00" * 64) is None
        True
    """
    try:
        reader = _Reader(content)
        model = reader.root()
        metadata, buffers = reader.field(model, _MODEL_METADATA), reader.field(model, _MODEL_BUFFERS)
        if metadata is None or buffers is None:
            return None
        entries, count = reader.vector(metadata)
        buffer_start, buffer_count = reader.vector(buffers)
        for index in range(min(count, 1024)):
            entry = reader.indirect(entries + 4 * index)
            name = reader.field(entry, _METADATA_NAME)
            if name is None or reader.string(name) != METADATA_NAME.encode():
                continue
            buffer_index = reader.scalar(entry, _METADATA_BUFFER, "<I")
            if buffer_index >= buffer_count:
                return None
            buffer = reader.indirect(buffer_start + 4 * buffer_index)
            data = reader.field(buffer, _BUFFER_DATA)
            if data is not None:
                raw = reader.string(data)
            else:  # large models keep buffers after the flatbuffer: offset and size from the file start
                offset, size = reader.scalar(buffer, _BUFFER_OFFSET, "<Q"), reader.scalar(buffer, _BUFFER_SIZE, "<Q")
                if size > _MAX_DOCUMENT_BYTES or offset + size > len(content):
                    return None
                raw = content[offset:offset + size]
            if len(raw) > _MAX_DOCUMENT_BYTES:
                return None
            document = json.loads(raw.decode("utf-8"))
            return document if isinstance(document, dict) else None
    except (ValueError, UnicodeDecodeError, struct.error):
        return None
    return None


def with_tflite_metadata(flatbuffer: bytes, document: dict) -> bytes:
    """`flatbuffer` with `document` stored as our metadata entry (replacing an earlier one). Needs TensorFlow."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(document, sort_keys=True).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [item for item in (model.metadata or []) if item.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata = kept + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
