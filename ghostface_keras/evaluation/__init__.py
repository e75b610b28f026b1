"""Face recognition benchmarks: pair verification (.bin), IJB-B/C, RFW bias, rank-k identification.

Example:
    >>> from ghostface_keras.data import load_bin
    >>> from ghostface_keras.evaluation import evaluate_verification
    >>> images, issame = load_bin("lfw.bin")
    >>> record = evaluate_verification("model.keras", images, issame, name="lfw")
    >>> record["accuracy"], record["tar_at_far"]["1e-03"]
"""

from ghostface_keras.evaluation.bias import RFW_GROUPS, find_rfw_bins, rfw_summary
from ghostface_keras.evaluation.embeddings import (
    EmbeddingFunction,
    TFLiteModel,
    extract_embeddings,
    load_embedding_model,
)
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
    "EmbeddingFunction", "TFLiteModel", "extract_embeddings", "load_embedding_model",
    "leave_one_out_identification", "list_identity_folder", "rank_k_identification", "read_face_images",
    "IJB_FARS", "IJBResult", "evaluate_ijb", "read_ijb_meta", "template_features",
    "results_table", "write_reports",
    "VerificationResult", "best_threshold_accuracy", "equal_error_rate", "evaluate_verification",
    "k_fold_accuracy", "pair_scores", "roc_auc", "roc_curve", "tar_at_far", "verification_metrics",
]
