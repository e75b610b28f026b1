"""Face recognition benchmarks: pair verification (.bin), IJB-B/C, RFW bias, rank-k identification.

Example:
    >>> import keras, numpy as np, tempfile
    >>> from ghostface_keras.data import load_bin, save_bin
    >>> from ghostface_keras.evaluation import evaluate_verification
    >>> pixels = np.random.default_rng(0).integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
    >>> path = save_bin(f"{tempfile.mkdtemp()}/toy.bin", pixels, [True, False] * 10)   # a toy "lfw.bin"
    >>> images, issame = load_bin(path)
    >>> inputs = keras.Input((112, 112, 3))               # an untrained stand-in for "model.keras"
    >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
    >>> record = evaluate_verification(model, images, issame, name="toy")
    >>> record["name"], record["pairs"], list(record["tar_at_far"])   # 10 impostor pairs: FAR >= 1e-01 only
    ('toy', 20, ['1e-01'])
"""

from ghostface_keras.evaluation.bias import RFW_GROUPS, find_rfw_bins, rfw_summary
from ghostface_keras.runtime.embedding import EmbeddingFunction, extract_embeddings
from ghostface_keras.evaluation.identification import (
    leave_one_out_identification,
    list_identity_folder,
    rank_k_identification,
    read_face_images,
)
from ghostface_keras.evaluation.ijb import IJB_FARS, IJBResult, evaluate_ijb, read_ijb_meta, template_features
from ghostface_keras.evaluation.reports import results_table, write_reports
from ghostface_keras.evaluation.verification import (
    VerificationResult,
    best_threshold_accuracy,
    equal_error_rate,
    evaluate_verification,
    k_fold_accuracy,
    pair_scores,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_metrics,
)

__all__ = [
    "RFW_GROUPS", "find_rfw_bins", "rfw_summary",
    "EmbeddingFunction", "extract_embeddings",
    "leave_one_out_identification", "list_identity_folder", "rank_k_identification", "read_face_images",
    "IJB_FARS", "IJBResult", "evaluate_ijb", "read_ijb_meta", "template_features",
    "results_table", "write_reports",
    "VerificationResult", "best_threshold_accuracy", "equal_error_rate", "evaluate_verification",
    "k_fold_accuracy", "pair_scores", "roc_auc", "roc_curve", "tar_at_far", "verification_metrics",
]
