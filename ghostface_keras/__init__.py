"""ghostface_keras: GhostFaceNets and the MobileFaceNet family in Keras 3.

Example:
    >>> from ghostface_keras import GhostFaceNetV1
    >>> model = GhostFaceNetV1(width=1.3, strides=2)   # the paper's GhostFaceNetV1-1.3-2
    >>> model.output_shape
    (None, 512)
"""

from ghostface_keras.errors import (
    ConversionError,
    DataError,
    ExportError,
    GhostFaceError,
    ModelNameError,
    NoFaceError,
)
from ghostface_keras.preprocessing import IMAGE_SIZE, denormalize_images, normalize_images

from ghostface_keras.blocks import hard_sigmoid_keras2, make_divisible
from ghostface_keras.flops import count_flops
from ghostface_keras.models import GhostFaceNetV1, GhostFaceNetV2, GhostNetV1, GhostNetV2, MMobileFaceNet, MobileFaceNet
from ghostface_keras.registry import ModelSpec, create_model, get_model_spec, list_models, register_model
from ghostface_keras.convert import load_official
from ghostface_keras.pretrained import PretrainedError, list_pretrained, load_pretrained

__version__ = "0.1.0"

# Public API of the other modules is added below, one import line per module.
from ghostface_keras.data import image_folder_dataset, load_bin, recordio_dataset, save_bin, synthetic_faces
from ghostface_keras.align import MTCNNDetector, align_face, align_folder, estimate_similarity_transform, load_rgb_image
from ghostface_keras.inference import FaceEmbedder, Gallery
from ghostface_keras.export import check_parity, export_onnx, export_saved_model, export_tflite
from ghostface_keras.evaluation import evaluate_ijb, evaluate_verification, extract_embeddings, verification_metrics
from ghostface_keras.errors import ModelLoadError
from ghostface_keras.heads import NormDense
from ghostface_keras.losses import AdaFace, ArcFace, CombinedMargin, CosFace, MagFace, get_margin_loss
from ghostface_keras.optimizers import SAMModel, build_optimizer
from ghostface_keras.partial_fc import PartialFCModel
from ghostface_keras.callbacks import CosineRestarts, ExponentialEpochDecay, StepDecay, VerificationCallback
from ghostface_keras.training import Stage, Trainer
from ghostface_keras.distribution import Cluster, setup_cluster, use_cpu_devices
