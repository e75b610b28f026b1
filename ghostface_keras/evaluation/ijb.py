"""IJB-B / IJB-C template protocols on the insightface `IJB_release` layout.

Layout (`<root>` is `IJB_release`, holding `IJBB/` and/or `IJBC/`; the subset folder itself also works):
```
<root>/IJBC/loose_crop/<image>.jpg                   loose face crops
<root>/IJBC/meta/ijbc_name_5pts_score.txt            image x1 y1 ... x5 y5 detector_score
<root>/IJBC/meta/ijbc_face_tid_mid.txt               image template_id media_id (same image order)
<root>/IJBC/meta/ijbc_template_pair_label.txt        template_1 template_2 label   (1:1)
<root>/IJBC/meta/ijbc_1N_gallery_G1.csv, _G2.csv     header, then template_id,subject_id,...   (1:N)
<root>/IJBC/meta/ijbc_1N_probe_mixed.csv             (IJB-B: ijbb_1N_gallery_S1/S2.csv)
```

Steps (insightface's default scenario, "N0D1F1"):
1. each loose crop is aligned to 112x112 with its 5 points (`ghostface_keras.faces.alignment.align_face`);
2. image embedding = f(x) + f(mirror x) (F1), *not* L2-normalized (N0), multiplied by the detector
   score (D1);
3. media pooling: images of one media (video) are averaged; template pooling: media features are
   summed, then L2-normalized;
4. 1:1: the score of a template pair is the cosine of the two template features; TAR at
   FAR = 1e-6 ... 1e-1 (insightface's "nearest ROC point" rule) and a ROC plot;
5. 1:N: top-1/5/10 and TPIR at FPIR over the galleries (probes mated in none count as non-mated).

Example:
    >>> from ghostface_keras.evaluation import evaluate_ijb
    >>> result = evaluate_ijb("model.keras", "IJB_release", subset="IJBC", identification=True)  # doctest: +SKIP
    >>> result.verification.tar_at_far["1e-04"]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from collections.abc import Iterator, Sequence

import numpy as np

from ghostface_keras.core.errors import DataError
from ghostface_keras.evaluation.verification import (
    VerificationResult,
    far_key,
    verification_metrics,
)
from ghostface_keras.core.numeric import l2_normalize

logger = logging.getLogger(__name__)

IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIR_POINTS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
GALLERY_NAMES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}
Aligner = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------
@dataclass
class IJBMeta:
    """Parsed IJB metadata: one row per face image, one row per template pair."""

    subset_dir: Path
    subset: str
    image_names: np.ndarray
    landmarks: np.ndarray  # (N, 5, 2)
    face_scores: np.ndarray  # (N,)
    templates: np.ndarray  # (N,)
    medias: np.ndarray  # (N,)
    pair_templates: np.ndarray  # (P, 2)
    pair_labels: np.ndarray  # (P,) bool

    @property
    def crop_dir(self) -> Path:
        return self.subset_dir / "loose_crop"


def subset_dir(root: str | Path, subset: str) -> Path:
    """The `<root>/<SUBSET>` folder (or `root` itself when it already is the subset folder).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()) / "IJB_release"
        >>> (root / "IJBC" / "meta").mkdir(parents=True)
        >>> subset_dir(root, "IJBC") == root / "IJBC" == subset_dir(root / "IJBC", "IJBC")
        True
    """
    root = Path(root)
    subset = subset.upper()
    if subset not in GALLERY_NAMES:
        raise DataError(f"IJB subset must be IJBB or IJBC, got {subset!r}")
    for candidate in (root / subset, root):
        if (candidate / "meta").is_dir():
            return candidate
    raise DataError(f"{root}: no {subset}/meta folder (expected the insightface IJB_release layout)")


def _meta_file(folder: Path, subset: str, suffix: str) -> Path:
    path = folder / "meta" / f"{subset.lower()}_{suffix}"
    if not path.is_file():
        raise DataError(f"{path}: missing IJB metadata file")
    return path


def _read_rows(path: Path, columns: int | None, separator: str | None = None, skip_header: bool = False
               ) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if skip_header and line_number == 1 or not line.strip():
                continue
            fields = line.strip().split(separator)
            if columns is not None and len(fields) < columns:
                raise DataError(f"{path}:{line_number}: expected {columns} fields, got {len(fields)}")
            rows.append(fields)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _as_numbers(path: Path, rows: list[list[str]], columns: slice, dtype: type) -> np.ndarray:
    try:
        return np.array([[dtype(value) for value in row[columns]] for row in rows])
    except ValueError as error:
        raise DataError(f"{path}: non-numeric value ({error})") from error


def read_ijb_meta(root: str | Path, subset: str = "IJBC") -> IJBMeta:
    """Parse the landmark, template/media and pair files of one IJB subset.

    Example:
        >>> import tempfile
        >>> meta_dir = Path(tempfile.mkdtemp()) / "IJB_release" / "IJBB" / "meta"     # a toy IJB-B: 2 images
        >>> meta_dir.mkdir(parents=True)
        >>> points = " 50" * 10                                   # x1 y1 ... x5 y5
        >>> _ = (meta_dir / "ijbb_name_5pts_score.txt").write_text(f"1.jpg{points} 0.9\\n2.jpg{points} 0.8\\n")
        >>> _ = (meta_dir / "ijbb_face_tid_mid.txt").write_text("1.jpg 1 10\\n2.jpg 2 20\\n")
        >>> _ = (meta_dir / "ijbb_template_pair_label.txt").write_text("1 2 0\\n")
        >>> meta = read_ijb_meta(meta_dir.parent.parent, "IJBB")
        >>> len(meta.image_names), len(meta.pair_labels)         # the real IJB-B: (227630, 8010270)
        (2, 1)
        >>> meta.landmarks.shape, meta.templates.tolist(), meta.medias.tolist()
        ((2, 5, 2), [1, 2], [10, 20])
    """
    subset = subset.upper()
    folder = subset_dir(root, subset)
    landmark_path = _meta_file(folder, subset, "name_5pts_score.txt")
    landmark_rows = _read_rows(landmark_path, 12)
    names = np.array([row[0] for row in landmark_rows])
    landmarks = _as_numbers(landmark_path, landmark_rows, slice(1, 11), float).reshape(-1, 5, 2)
    scores = _as_numbers(landmark_path, landmark_rows, slice(-1, None), float)[:, 0]

    media_path = _meta_file(folder, subset, "face_tid_mid.txt")
    media_rows = _read_rows(media_path, 3)
    if len(media_rows) != len(names):
        raise DataError(f"{media_path}: {len(media_rows)} rows but {landmark_path.name} has {len(names)}")
    mismatched = [index for index, row in enumerate(media_rows) if row[0] != names[index]]
    if mismatched:
        raise DataError(f"{media_path}: row {mismatched[0] + 1} names {media_rows[mismatched[0]][0]!r} but "
                        f"{landmark_path.name} names {names[mismatched[0]]!r} (files must list images in one order)")
    template_media = _as_numbers(media_path, media_rows, slice(1, 3), int)

    pair_path = _meta_file(folder, subset, "template_pair_label.txt")
    pairs = _as_numbers(pair_path, _read_rows(pair_path, 3), slice(0, 3), int)
    return IJBMeta(folder, subset, names, landmarks, scores, template_media[:, 0], template_media[:, 1],
                   pairs[:, :2], pairs[:, 2].astype(bool))


# --------------------------------------------------------------------------------------------------
# Aligned crops, streamed in batches
# --------------------------------------------------------------------------------------------------
def _default_aligner() -> Aligner:
    try:
        from ghostface_keras.faces.alignment import align_face
    except ImportError as error:
        raise DataError(f"IJB alignment needs ghostface_keras.faces.alignment.align_face ({error})") from error
    return align_face


def _load_and_align(path: Path, landmarks: np.ndarray, aligner: Aligner) -> np.ndarray:
    from ghostface_keras.core.images import load_rgb_image

    return aligner(load_rgb_image(path), landmarks)


def aligned_batches(meta: IJBMeta, batch_size: int = 128, aligner: Aligner | None = None,
                    workers: int = 4) -> Iterator[np.ndarray]:
    """Aligned 112x112 uint8 RGB crops of every image, in metadata order, `batch_size` at a time.

    Decoding and warping run in a thread pool, one batch ahead of the model.

    Example:
        >>> meta = read_ijb_meta("IJB_release", "IJBB")        # doctest: +SKIP
        >>> next(aligned_batches(meta, 64)).shape              # doctest: +SKIP
        (64, 112, 112, 3)
    """
    aligner = aligner or _default_aligner()
    paths = [meta.crop_dir / name for name in meta.image_names]

    def load_batch(start: int) -> np.ndarray:
        stop = min(start + batch_size, len(paths))
        return np.stack([_load_and_align(paths[i], meta.landmarks[i], aligner) for i in range(start, stop)])

    starts = list(range(0, len(paths), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(load_batch, start) for start in starts[:2]]
        for index in range(len(starts)):
            batch = pending.pop(0).result()
            if index + 2 < len(starts):
                pending.append(pool.submit(load_batch, starts[index + 2]))
            yield batch


# --------------------------------------------------------------------------------------------------
# Pooling and scores
# --------------------------------------------------------------------------------------------------
def image_features(embeddings: np.ndarray, flipped: np.ndarray | None, face_scores: np.ndarray,
                   normalize: bool = False, score_weighting: bool = True) -> np.ndarray:
    """insightface's image-level scenario: F (add flip) -> N (L2-normalize) -> D (times detector score).

    Example:
        >>> image_features(np.ones((1, 2)), np.ones((1, 2)), np.array([0.5])).tolist()
        [[1.0, 1.0]]
    """
    features = np.asarray(embeddings, dtype=np.float32)
    if flipped is not None:
        features = features + flipped
    if normalize:
        features = l2_normalize(features)
    if score_weighting:
        features = features * np.asarray(face_scores, dtype=np.float32)[:, None]
    return features


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Media mean, then template sum, then L2-normalize: `(template ids sorted, features)`.

    Example:
        >>> ids, pooled = template_features(np.array([[1., 0], [3., 0], [0, 1]]), np.array([5, 5, 5]), np.array([1, 1, 2]))
        >>> ids.tolist(), pooled.astype(float).round(4).tolist()      # media 1 -> (2, 0), media 2 -> (0, 1)
        ([5], [[0.8944, 0.4472]])
    """
    template_ids, template_index = np.unique(templates, return_inverse=True)
    template_index = template_index.reshape(-1).astype(np.int64)
    medias = np.asarray(medias, dtype=np.int64)
    media_span = int(medias.max() - medias.min()) + 1
    # one integer per (template, media), ordered by template first: 1-D unique is fast
    media_keys, media_index = np.unique(template_index * media_span + (medias - medias.min()), return_inverse=True)
    media_index = media_index.reshape(-1)
    # group sums by sorting once and np.add.reduceat (np.add.at is very slow on IJB-C's 469k x 512)
    order = np.argsort(media_index, kind="stable")
    features = np.asarray(features, dtype=np.float32)
    media_sum = np.add.reduceat(features[order], _group_starts(media_index[order]), axis=0, dtype=np.float64)
    media_mean = media_sum / np.bincount(media_index)[:, None]
    pooled = np.add.reduceat(media_mean, _group_starts(media_keys // media_span), axis=0)
    return template_ids, l2_normalize(pooled)


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    return np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]


def _rows_of(ids: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    rows = np.clip(np.searchsorted(ids, wanted), 0, len(ids) - 1)
    missing = ids[rows] != wanted
    if missing.any():
        raise DataError(f"{int(missing.sum())} {what} refer to templates without images "
                        f"(first: {int(np.asarray(wanted)[missing][0])})")
    return rows


def template_pair_scores(template_ids: np.ndarray, features: np.ndarray, pairs: np.ndarray,
                         chunk: int = 100_000) -> np.ndarray:
    """Cosine of each template pair (features are unit length), in chunks to bound memory.

    Example:
        >>> template_pair_scores(np.array([1, 2]), np.eye(2), np.array([[1, 2], [2, 2]])).tolist()
        [0.0, 1.0]
    """
    first = _rows_of(template_ids, pairs[:, 0], "pairs")
    second = _rows_of(template_ids, pairs[:, 1], "pairs")
    scores = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), chunk):
        stop = start + chunk
        scores[start:stop] = np.sum(features[first[start:stop]] * features[second[start:stop]], axis=1)
    return scores


# --------------------------------------------------------------------------------------------------
# 1:N
# --------------------------------------------------------------------------------------------------
def read_template_subjects(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unique (template id, subject id) rows of an IJB 1:N csv (header skipped).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "ijbc_1N_probe_mixed.csv"
        >>> _ = path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\\n11,1,img/1.jpg\\n11,1,img/2.jpg\\n12,2,img/3.jpg\\n")
        >>> templates, subjects = read_template_subjects(path)
        >>> templates.tolist(), subjects.tolist()
        ([11, 12], [1, 2])
    """
    rows = _read_rows(path, 2, separator=",", skip_header=True)
    pairs = np.unique(_as_numbers(path, rows, slice(0, 2), int), axis=0)
    if len(np.unique(pairs[:, 0])) != len(pairs):
        raise DataError(f"{path}: a template is listed with two different subjects")
    return pairs[:, 0], pairs[:, 1]


def open_set_identification(gallery_features: np.ndarray, gallery_subjects: np.ndarray,
                            probe_features: np.ndarray, probe_subjects: np.ndarray,
                            ranks: Sequence[int] = (1, 5, 10), fpirs: Sequence[float] = FPIR_POINTS
                            ) -> dict[str, Any]:
    """Top-k hits of mated probes and TPIR at FPIR for one gallery (insightface's IJB 1:N rules).

    The threshold at FPIR f is the non-mated probes' best scores, sorted descending, at index
    max(int(n * f) - 1, 0); a mated probe is a true positive there when its rank-1 subject is right
    and its score exceeds the threshold. Features must be L2-normalized.

    Returns counts (`mated`, `hits_at_<k>`) and `tpir` (dict keyed by FPIR).

    Example:
        >>> result = open_set_identification(np.eye(2), np.array([1, 2]), np.eye(2)[[0, 1, 1]], np.array([1, 2, 3]))
        >>> result["mated"], result["hits_at_1"]
        (2, 2)
    """
    from ghostface_keras.evaluation.identification import identity_scores

    scores, subjects = identity_scores(gallery_features, gallery_subjects, probe_features)
    mated = np.isin(probe_subjects, subjects)
    result: dict[str, Any] = {"mated": int(mated.sum()), "non_mated": int((~mated).sum())}
    columns = np.searchsorted(subjects, probe_subjects[mated])
    mated_scores = scores[mated]
    true_scores = mated_scores[np.arange(len(columns)), columns]
    # ties count against the probe, as in the closed-set CMC
    ranks_of_truth = np.sum(mated_scores >= true_scores[:, None], axis=1)
    for k in ranks:
        result[f"hits_at_{k}"] = int(np.sum(ranks_of_truth <= k))
    non_mated_best = np.sort(scores[~mated].max(axis=1))[::-1] if (~mated).any() else np.zeros(0)
    rank_one_right = ranks_of_truth == 1
    tpir = {}
    for fpir in fpirs:
        if len(non_mated_best) == 0 or not mated.any():
            continue
        threshold = non_mated_best[max(int(len(non_mated_best) * fpir) - 1, 0)]
        tpir[far_key(fpir)] = float(np.mean(rank_one_right & (true_scores > threshold)))
    result["tpir"] = tpir
    return result


def ijb_identification(meta: IJBMeta, template_ids: np.ndarray, features: np.ndarray,
                       ranks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """1:N over both galleries of the subset: top-k over all mated probes, TPIR averaged over galleries.

    Example:
        >>> result = evaluate_ijb("model.keras", "IJB_release", "IJBC")                    # doctest: +SKIP
        >>> meta = read_ijb_meta("IJB_release", "IJBC")                                     # doctest: +SKIP
        >>> ijb_identification(meta, result.template_ids, result.template_features)["top_1"]  # doctest: +SKIP
    """
    probe_templates, probe_subjects = read_template_subjects(_meta_file(meta.subset_dir, meta.subset,
                                                                        "1N_probe_mixed.csv"))
    probe_features = features[_rows_of(template_ids, probe_templates, "probe templates")]
    per_gallery = {}
    for gallery in GALLERY_NAMES[meta.subset]:
        path = _meta_file(meta.subset_dir, meta.subset, f"1N_gallery_{gallery}.csv")
        gallery_templates, gallery_subjects = read_template_subjects(path)
        gallery_features = features[_rows_of(template_ids, gallery_templates, "gallery templates")]
        per_gallery[gallery] = open_set_identification(gallery_features, gallery_subjects, probe_features,
                                                       probe_subjects, ranks)
    mated = sum(result["mated"] for result in per_gallery.values())
    record: dict[str, Any] = {"name": f"{meta.subset}-1N", "probes": int(len(probe_templates)),
                              "galleries": per_gallery}
    for k in ranks:
        record[f"top_{k}"] = sum(r[f"hits_at_{k}"] for r in per_gallery.values()) / max(mated, 1)
    keys = set.intersection(*(set(result["tpir"]) for result in per_gallery.values()))
    record["tpir_at_fpir"] = {key: float(np.mean([r["tpir"][key] for r in per_gallery.values()]))
                              for key in sorted(keys, key=float)}
    return record


# --------------------------------------------------------------------------------------------------
# Whole protocol
# --------------------------------------------------------------------------------------------------
@dataclass
class IJBResult:
    """1:1 verification (`VerificationResult`, ROC included) and optional 1:N record of one subset."""

    verification: VerificationResult
    identification: dict[str, Any] | None
    template_ids: np.ndarray
    template_features: np.ndarray


def evaluate_ijb(model: Any, root: str | Path, subset: str = "IJBC", batch_size: int = 128,
                 flip: bool = True, normalize_images: bool = False, score_weighting: bool = True,
                 identification: bool = False, aligner: Aligner | None = None, progress: bool = True,
                 workers: int = 4) -> IJBResult:
    """Run the IJB-B/C protocol for `model` (anything `extract_embeddings` accepts).

    Defaults are insightface's N0D1F1 scenario (flip-summed, not normalized, score-weighted). An
    `EmbeddingFunction` passed as `model` keeps its own batch size and flip setting.

    Example:
        >>> result = evaluate_ijb("model.keras", "/data/IJB_release", "IJBB")    # doctest: +SKIP
        >>> result.verification.record()["tar_at_far"]["1e-04"]                  # doctest: +SKIP
    """
    from ghostface_keras.runtime.embedding import as_embedding_function, extract_embeddings

    meta = read_ijb_meta(root, subset)
    logger.info("%s: %d images, %d templates, %d pairs", meta.subset, len(meta.image_names),
                len(np.unique(meta.templates)), len(meta.pair_labels))
    embed = as_embedding_function(model, batch_size=batch_size, flip=flip)
    raw = extract_embeddings(embed, aligned_batches(meta, batch_size, aligner, workers), normalize=False,
                             progress=progress, total=len(meta.image_names))
    features = image_features(raw, None, meta.face_scores, normalize_images, score_weighting)
    template_ids, pooled = template_features(features, meta.templates, meta.medias)
    scores = template_pair_scores(template_ids, pooled, meta.pair_templates)
    verification = verification_metrics(scores, meta.pair_labels, name=meta.subset, n_folds=0,
                                        fars=IJB_FARS, far_method="nearest")
    one_to_n = ijb_identification(meta, template_ids, pooled) if identification else None
    return IJBResult(verification, one_to_n, template_ids, pooled)
