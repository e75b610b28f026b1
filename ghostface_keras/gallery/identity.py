"""Which model a gallery's embeddings come from, and the one check every embedding passes before it enters.

Embeddings of two models are not comparable (a cosine between them means nothing), so a gallery records the model
that made it: its name, the released checkpoint when known, the embedding length, and a fingerprint (the unit
embedding of one fixed synthetic crop; `ghostface_keras.faces.enroll.model_identity`). Another model is refused
in one line: a different length always, a different fingerprint (cosine below `FINGERPRINT_MIN_COSINE`) when both
have one, else a different name. The cosine tolerance lets float noise (the same weights in another float format)
pass.

Example:
    >>> import numpy as np
    >>> identity = ModelIdentity("toy", 2)
    >>> check_embeddings(np.array([[3.0, 4.0]]), identity, ["a.jpg"]).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    >>> check_embeddings(np.array([[np.nan, 1.0]]), identity, ["a.jpg"])
    Traceback (most recent call last):
    ...
    ghostface_keras.core.errors.DataError: a.jpg: its embedding holds NaN or infinity; not enrolled
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import numpy as np

from ghostface_keras.core.errors import DataError

FINGERPRINT_MIN_COSINE = 0.99
# an embedding shorter than this before normalization carries no direction (a dead model, an all-zero output)
MIN_NORM = 1e-6


@dataclass(frozen=True)
class ModelIdentity:
    """The model of a gallery: `name`, `embedding_size`, and optionally `checkpoint` and `fingerprint`."""

    name: str
    embedding_size: int
    checkpoint: str | None = None
    fingerprint: tuple[float, ...] | None = None

    def describe(self) -> str:
        """'GhostFaceNetV1-0.5-2 (512-d)'."""
        return f"{self.checkpoint or self.name} ({self.embedding_size}-d)"

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "embedding_size": self.embedding_size, "checkpoint": self.checkpoint,
                           "fingerprint": list(self.fingerprint) if self.fingerprint is not None else None})

    @classmethod
    def from_json(cls, text: str, source: Any = "gallery") -> ModelIdentity:
        try:
            data = json.loads(text)
            fingerprint = data.get("fingerprint")
            return cls(str(data["name"]), int(data["embedding_size"]), data.get("checkpoint"),
                       tuple(float(value) for value in fingerprint) if fingerprint is not None else None)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{source}: unreadable model identity ({type(error).__name__}: {error})") from None

    def refuse_other(self, other: ModelIdentity, source: Any = "gallery") -> None:
        """One `DataError` naming both models when `other`'s embeddings cannot be compared with ours."""
        problem = None
        if other.embedding_size != self.embedding_size:
            problem = "a different embedding size"
        elif self.fingerprint is not None and other.fingerprint is not None:
            a, b = np.asarray(self.fingerprint, np.float64), np.asarray(other.fingerprint, np.float64)
            if len(a) != len(b) or float(a @ b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12) \
                    < FINGERPRINT_MIN_COSINE:
                problem = "different weights (its embeddings of a fixed test face differ)"
        elif (other.checkpoint or other.name) != (self.checkpoint or self.name):
            problem = "a different model name"
        if problem is not None:
            raise DataError(f"{source}: holds embeddings of {self.describe()}, not of {other.describe()} "
                            f"({problem}); use the model it was built with, or a new gallery")


def check_embeddings(embeddings: Any, identity: ModelIdentity | int,
                     sources: Sequence[Any] | str = "embedding") -> np.ndarray:
    """`embeddings` as (N, D) unit float32 rows, or one `DataError` naming the first bad row's source: another
    length than the gallery's, NaN or infinity, or (near) zero length. One 1-d embedding is taken as one row."""
    size = identity.embedding_size if isinstance(identity, ModelIdentity) else int(identity)
    array = np.asarray(embeddings)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"embeddings of shape {array.shape} and type {array.dtype}: expected (N, {size}) floats")
    if array.shape[1] != size:
        name = identity.describe() if isinstance(identity, ModelIdentity) else f"{size}-d"
        raise DataError(f"{_source(sources, 0)}: a {array.shape[1]}-d embedding; this gallery holds {name} "
                        "embeddings")
    array = array.astype(np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise DataError(f"{_source(sources, int(np.argmin(finite)))}: its embedding holds NaN or infinity; not "
                        "enrolled")
    norms = np.linalg.norm(array, axis=1)
    if (norms < MIN_NORM).any():
        raise DataError(f"{_source(sources, int(np.argmax(norms < MIN_NORM)))}: its embedding is zero (the model "
                        "gave no direction); not enrolled")
    return (array / norms[:, None]).astype(np.float32)


def _source(sources: Sequence[Any] | str, row: int) -> str:
    if isinstance(sources, str):
        return sources if row == 0 else f"{sources} {row + 1}"
    return str(sources[row]) if row < len(sources) else f"embedding {row + 1}"
