"""Closed-set rank-k identification (CMC): gallery/probe splits (TinyFace-style) and identity folders.

Each probe is compared with every gallery embedding (cosine); identities are ranked by their best
gallery match (the nearest-neighbour rule); the probe is correct at rank k when its identity is
among the top k. Probes whose identity has no gallery image are left out of the CMC (they are
distractors in open-set terms) and counted separately.

For a folder of identity sub-folders, the protocol is leave-one-out: every image is a probe against
all the *other* images (so an image never matches itself, unlike the official `eval_folder.py`,
which puts each probe in its own class centre).

Example:
    >>> import numpy as np
    >>> from ghostface_keras.evaluation import rank_k_identification
    >>> gallery, gallery_ids = np.eye(3), [10, 20, 30]           # one embedding per gallery image
    >>> probes = np.array([[0.9, 0.1, 0.0], [0.1, 0.0, 0.9], [0.6, 0.5, 0.0]])
    >>> result = rank_k_identification(gallery, gallery_ids, probes, [10, 30, 20], ranks=(1, 2))
    >>> round(result["rank_1"], 3), result["rank_2"]             # the last probe is closer to 10 than to 20
    (0.667, 1.0)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from ghostface_keras.core.errors import DataError
from ghostface_keras.core.files import list_images
from ghostface_keras.core.images import read_face_images
from ghostface_keras.core.numeric import l2_normalize
from ghostface_keras.data.folders import scan_image_folder



def identity_scores(gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray,
                    exclude_same_index: bool = False, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per probe, the best cosine to each gallery identity: `(scores (P, I), identities (I,))`.

    With `exclude_same_index`, probe i and gallery i are the same image and never match each other.

    Example:
        >>> scores, ids = identity_scores(np.eye(3), np.array([7, 7, 9]), np.eye(3)[:1])
        >>> ids.tolist(), scores.tolist()
        ([7, 9], [[1.0, 0.0]])
    """
    gallery, probes = l2_normalize(gallery), l2_normalize(probes)
    identities, column = np.unique(np.asarray(gallery_labels), return_inverse=True)
    best = np.full((len(probes), len(identities)), -np.inf, dtype=np.float32)
    for start in range(0, len(probes), chunk):
        similarity = probes[start:start + chunk] @ gallery.T
        if exclude_same_index:
            rows = np.arange(len(similarity))
            similarity[rows, rows + start] = -np.inf
        for identity_index in range(len(identities)):
            members = column == identity_index
            best[start:start + chunk, identity_index] = similarity[:, members].max(axis=1)
    return best, identities


def cmc_from_scores(scores: np.ndarray, identities: np.ndarray, probe_labels: np.ndarray,
                    max_rank: int = 10) -> tuple[np.ndarray, int]:
    """Cumulative match characteristic: fraction of enrolled probes correct within rank 1..max_rank.

    Ties are counted against the probe (the true identity's rank is 1 + the number of identities
    scoring at least as high, other than itself). Returns `(cmc, enrolled probe count)`.

    Example:
        >>> cmc, count = cmc_from_scores(np.array([[0.9, 0.5], [0.2, 0.8]]), np.array([1, 2]), np.array([2, 2]), 2)
        >>> cmc.tolist(), count
        ([0.5, 1.0], 2)
    """
    probe_labels = np.asarray(probe_labels)
    lookup = {label: index for index, label in enumerate(identities.tolist())}
    enrolled = np.array([label in lookup for label in probe_labels.tolist()], dtype=bool)
    if not enrolled.any():
        raise DataError("no probe identity appears in the gallery: rank-k is undefined")
    columns = np.array([lookup[label] for label in probe_labels[enrolled].tolist()])
    enrolled_scores = scores[enrolled]
    true_scores = enrolled_scores[np.arange(len(columns)), columns]
    ranks = np.sum(enrolled_scores >= true_scores[:, None], axis=1)  # 1 = best (true id counts itself)
    cmc = np.array([np.mean(ranks <= k) for k in range(1, max_rank + 1)])
    return cmc, int(enrolled.sum())


def rank_k_identification(gallery: np.ndarray, gallery_labels: Sequence, probes: np.ndarray,
                          probe_labels: Sequence, ranks: Sequence[int] = (1, 5, 10),
                          name: str = "identification") -> dict[str, Any]:
    """Rank-k accuracy of probes against a gallery (embeddings; labels are identity ids).

    Returns a record with `rank_<k>` entries, the CMC up to the largest k, and the counts.

    Example:
        >>> rank_k_identification(np.eye(2), [0, 1], np.eye(2), [0, 1], ranks=(1,))["rank_1"]
        1.0
    """
    scores, identities = identity_scores(gallery, np.asarray(gallery_labels), probes)
    return _identification_record(scores, identities, np.asarray(probe_labels), ranks, name, len(gallery))


def leave_one_out_identification(embeddings: np.ndarray, labels: Sequence, ranks: Sequence[int] = (1, 5, 10),
                                 name: str = "identification") -> dict[str, Any]:
    """Every image is a probe against all the other images (identities with one image are skipped as probes).

    Example:
        >>> leave_one_out_identification(np.array([[1, 0], [1, .1], [0, 1], [.1, 1]]), [0, 0, 1, 1], (1,))["rank_1"]
        1.0
    """
    labels = np.asarray(labels)
    identities, counts = np.unique(labels, return_counts=True)
    scores, identities = identity_scores(embeddings, labels, embeddings, exclude_same_index=True)
    usable = np.isin(labels, identities[counts >= 2])
    return _identification_record(scores[usable], identities, labels[usable], ranks, name, len(embeddings))


def _identification_record(scores: np.ndarray, identities: np.ndarray, probe_labels: np.ndarray,
                           ranks: Sequence[int], name: str, gallery_size: int) -> dict[str, Any]:
    max_rank = max(ranks)
    cmc, enrolled = cmc_from_scores(scores, identities, probe_labels, max_rank)
    record: dict[str, Any] = {"name": name, "probes": enrolled, "gallery": int(gallery_size),
                              "identities": int(len(identities))}
    for k in ranks:
        record[f"rank_{k}"] = float(cmc[k - 1])
    record["cmc"] = [float(value) for value in cmc]
    return record


# --------------------------------------------------------------------------------------------------
# Identity folders
# --------------------------------------------------------------------------------------------------
def list_identity_folder(folder: str | os.PathLike) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files of `folder/<identity>/*`, their integer labels and the identity names: the training
    scanner's view (`ghostface_keras.data.scan_image_folder`), so a folder is labelled the same whether it
    is trained on or evaluated (natural order, empty and hidden identity folders skipped).

    Example:
        >>> import tempfile
        >>> from ghostface_keras.data import synthetic_faces
        >>> folder = synthetic_faces(tempfile.mkdtemp(), num_identities=3, images_per_identity=2)
        >>> paths, labels, names = list_identity_folder(folder)
        >>> len(paths), labels.tolist(), names
        (6, [0, 0, 1, 1, 2, 2], ['000000', '000001', '000002'])
    """
    index = scan_image_folder(folder)
    return [Path(path) for path in index.paths], index.labels, list(index.class_names)


def all_pair_scores(embeddings: np.ndarray, labels: Sequence, max_impostor_pairs: int = 1_000_000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of every genuine pair (i < j, same label) and of impostor pairs (all, or a seeded sample).

    Example:
        >>> scores, same = all_pair_scores(np.eye(3), [0, 0, 1])
        >>> scores.tolist(), same.tolist()
        ([0.0, 0.0, 0.0], [True, False, False])
    """
    labels = np.asarray(labels)
    unit = l2_normalize(embeddings)
    first, second = np.triu_indices(len(labels), k=1)
    same = labels[first] == labels[second]
    impostors = np.flatnonzero(~same)
    if len(impostors) > max_impostor_pairs:
        impostors = np.sort(np.random.default_rng(seed).choice(impostors, max_impostor_pairs, replace=False))
    keep = np.r_[np.flatnonzero(same), impostors]
    scores = np.sum(unit[first[keep]] * unit[second[keep]], axis=1).astype(np.float64)
    return scores, same[keep]


def evaluate_folder(model: Any, folder: str | os.PathLike, batch_size: int = 128, flip: bool = True,
                    ranks: Sequence[int] = (1, 5, 10), progress: bool = True) -> tuple[dict[str, Any], Any]:
    """Leave-one-out rank-k identification and all-pairs verification of a folder of identity folders.

    Images that are not 112x112 are resized (bilinear); they should already be aligned faces.
    Returns `(identification record, VerificationResult)`; the verification has no k-fold accuracy
    (the pairs are not in protocol folds) but has best-threshold accuracy, AUC, EER and TAR@FAR.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.data import synthetic_faces
        >>> folder = synthetic_faces(tempfile.mkdtemp(), num_identities=3, images_per_identity=2)
        >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for "model.keras"
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> identification, verification = evaluate_folder(model, folder, ranks=(1, 2), progress=False)
        >>> identification["probes"], identification["identities"], verification.pairs   # 6 images: 15 pairs
        (6, 3, 15)
    """
    from ghostface_keras.runtime.embedding import extract_embeddings
    from ghostface_keras.evaluation.verification import verification_metrics

    paths, labels, _ = list_identity_folder(folder)
    images = read_face_images(paths)
    embeddings = extract_embeddings(model, images, batch_size=batch_size, flip=flip, progress=progress)
    name = Path(folder).name or str(folder)
    identification = leave_one_out_identification(embeddings, labels, ranks, name=name)
    scores, same = all_pair_scores(embeddings, labels)
    return identification, verification_metrics(scores, same, name=name, n_folds=0)


def evaluate_gallery_probe(model: Any, gallery_dir: str | os.PathLike, probe_dir: str | os.PathLike,
                           distractor_dir: str | os.PathLike | None = None, batch_size: int = 128,
                           flip: bool = True, ranks: Sequence[int] = (1, 5, 10), progress: bool = True
                           ) -> dict[str, Any]:
    """TinyFace-style rank-k: identity folders for the gallery and the probes, plus optional distractors.

    Identities are matched by sub-folder name. Every image under `distractor_dir` (any depth of
    sub-folders) joins the gallery as an identity of its own that no probe can match.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.data import synthetic_faces
        >>> root = Path(tempfile.mkdtemp())
        >>> gallery = synthetic_faces(root / "gallery", num_identities=3, images_per_identity=1)
        >>> probes = synthetic_faces(root / "probe", num_identities=3, images_per_identity=2)    # the same 3 people
        >>> distractors = synthetic_faces(root / "distractors", 2, 1, first_identity=3)         # 2 others
        >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for "model.keras"
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> record = evaluate_gallery_probe(model, gallery, probes, distractors, ranks=(1, 5), progress=False)
        >>> record["name"], record["probes"], record["gallery"], sorted(record)[-2:]
        ('probe', 6, 5, ['rank_1', 'rank_5'])
    """
    from ghostface_keras.runtime.embedding import as_embedding_function, extract_embeddings

    embed = as_embedding_function(model, batch_size, flip)
    gallery_paths, gallery_labels, gallery_names = list_identity_folder(gallery_dir)
    probe_paths, probe_labels, probe_names = list_identity_folder(probe_dir)
    gallery_ids = np.array([gallery_names[label] for label in gallery_labels], dtype=object)
    probe_ids = np.array([probe_names[label] for label in probe_labels], dtype=object)
    if distractor_dir is not None:
        distractors = list_images(distractor_dir)
        if not distractors:
            raise DataError(f"{distractor_dir}: no distractor images found")
        gallery_paths = list(gallery_paths) + distractors
        gallery_ids = np.r_[gallery_ids, np.array([f"\0distractor{index}" for index in range(len(distractors))],
                                                  dtype=object)]
    gallery = extract_embeddings(embed, read_face_images(gallery_paths), progress=progress)
    probes = extract_embeddings(embed, read_face_images(probe_paths), progress=progress)
    name = Path(probe_dir).name or str(probe_dir)
    return rank_k_identification(gallery, gallery_ids.astype(str), probes, probe_ids.astype(str), ranks, name=name)
