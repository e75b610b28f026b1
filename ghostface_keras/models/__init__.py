"""Architectures: GhostNet V1/V2 (ImageNet), GhostFaceNet V1/V2, MobileFaceNet, MMobileFaceNet."""

from ghostface_keras.models.ghostfacenet import GhostFaceNetV1, GhostFaceNetV2
from ghostface_keras.models.ghostnet import GhostNetV1, GhostNetV2, ghostnet_features
from ghostface_keras.models.mobilefacenet import MMobileFaceNet, MobileFaceNet

__all__ = ["GhostFaceNetV1", "GhostFaceNetV2", "GhostNetV1", "GhostNetV2", "MobileFaceNet", "MMobileFaceNet",
           "ghostnet_features"]
