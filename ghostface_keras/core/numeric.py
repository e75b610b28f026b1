"""Numpy helpers every flow shares (a leaf module: it imports nothing of the library).

Embeddings are compared by cosine similarity: rows are scaled to unit length once, here, and every
caller (inference, evaluation, export parity, training callbacks) uses these two functions.

Example:
    >>> import numpy as np
    >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    >>> row_cosines(np.array([[1.0, 0.0]]), np.array([[2.0, 2.0]])).round(4).tolist()
    [0.7071]
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-12


def l2_normalize(embeddings: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """Rows (the last axis) scaled to unit length as float32; all-zero rows stay zero.

    Example:
        >>> l2_normalize(np.array([[0.0, 2.0]])).tolist()
        [[0.0, 1.0]]
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.maximum(norms, epsilon)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of `a` with row i of `b` (float64, shape (N,)).

    Example:
        >>> row_cosines(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])).tolist()
        [1.0, 0.0]
    """
    a = l2_normalize(np.asarray(a, dtype=np.float64)).astype(np.float64)
    b = l2_normalize(np.asarray(b, dtype=np.float64)).astype(np.float64)
    return np.sum(a * b, axis=-1)
