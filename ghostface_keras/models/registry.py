"""Model zoo registry: the literature's names -> builder + default configuration.

Names follow the GhostFaceNets paper: `GhostFaceNetV1-1.3-2` is version 1, width 1.3, stem
stride 2. Lookup is case-insensitive; "GhostFaceNetV1-1.0-2" and "GhostFaceNetV1-1-2" are the same.

Example:
    >>> from ghostface_keras import create_model, list_models
    >>> "GhostFaceNetV1-1.3-2" in list_models()
    True
    >>> create_model("GhostFaceNetV1-1.3-2", use_bias=False).count_params()
    4066388
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable
from collections.abc import Mapping

import keras

from ghostface_keras.weights.checkpoints import canonical_name, default_checkpoint, reported_accuracy
from ghostface_keras.core.errors import ModelNameError
from ghostface_keras.models.ghostfacenet import GhostFaceNetV1, GhostFaceNetV2
from ghostface_keras.models.ghostnet import GhostNetV1, GhostNetV2
from ghostface_keras.models.mobilefacenet import MMobileFaceNet, MobileFaceNet

FACE_NORMALIZATION = "(x - 127.5) / 128, RGB"
IMAGENET_NORMALIZATION = "(x - 127.5) / 128, RGB (GhostNet ImageNet classifiers; no weights shipped)"


@dataclass(frozen=True)
class ModelSpec:
    """A registered variant: how to build it and what the literature reports for it.

    `reported` holds accuracies in % from the source named in `source` (keys like "LFW",
    "CFP-FP", "AgeDB-30", "IJB-B", "IJB-C"; IJB at TAR@FAR=1e-4). `pretrained` names the entry in
    `pretrained/` for the released checkpoint, if any.
    """

    name: str
    builder: Callable[..., keras.Model]
    config: Mapping[str, Any]
    input_shape: tuple[int, int, int] = (112, 112, 3)
    normalization: str = FACE_NORMALIZATION
    reported: Mapping[str, float] = field(default_factory=dict)
    source: str = ""
    pretrained: str | None = None
    notes: str = ""

    def build(self, **overrides) -> keras.Model:
        """Build the model with the registered config, `overrides` taking precedence."""
        config = dict(self.config)
        config.setdefault("input_shape", self.input_shape)
        # an override under a deprecated name (e.g. strides=) replaces the config's new name (stem_strides)
        for old, new in getattr(self.builder, "renamed_arguments", {}).items():
            if old in overrides and new not in overrides:
                config.pop(new, None)
        config.update(overrides)
        return self.builder(**config)


# The variants the official code builds (width, stem stride). What they scored, their released checkpoints
# and whether those have a GDC_conv bias are facts about checkpoints: `weights/checkpoints.py` holds them.
_V1_VARIANTS = ((0.5, 2), (1.0, 1), (1.0, 2), (1.2, 2), (1.3, 1), (1.3, 2), (1.4, 2), (2.0, 1), (2.0, 2))
_V2_VARIANTS = ((1.0, 1), (1.0, 2), (1.1, 2), (1.2, 2), (1.3, 1), (1.3, 2), (1.4, 2), (1.5, 2))


def _ghostfacenet_specs() -> list[ModelSpec]:
    specs = []
    for version, builder, variants in (("V1", GhostFaceNetV1, _V1_VARIANTS), ("V2", GhostFaceNetV2, _V2_VARIANTS)):
        for width, stride in variants:
            name = f"GhostFaceNet{version}-{width:g}-{stride}"
            release = default_checkpoint(name)
            reported, source = reported_accuracy(name)
            bias = bool(release and release.gdc_bias)
            specs.append(ModelSpec(
                name=name,
                builder=builder,
                config={"width": width, "stem_strides": stride, "use_bias": bias},
                reported=reported,
                source=source,
                pretrained=release.name if release else None,
                notes=("GDC_conv bias as the released checkpoint" if bias else
                       "" if release else "no official weights released"),
            ))
    return specs


def _other_specs() -> list[ModelSpec]:
    hassanpour = "Hassanpour & Kowsari, Lightweight Face Recognition: An Improved MobileFaceNet Model"
    specs = [
        ModelSpec("MobileFaceNet", MobileFaceNet, {}, source=hassanpour,
                  notes="Chen et al. 2018 with PReLU and a GDC head to 512-d; reported 1.1 M params, 236.75 MFLOPs"),
        ModelSpec("MMobileFaceNet", MMobileFaceNet, {}, source=hassanpour,
                  notes="expansion channels doubled; reported 2.1 M params, 456.89 MFLOPs"),
    ]
    for width, top1 in ((0.5, 66.2), (1.0, 73.9), (1.3, 75.7)):
        specs.append(ModelSpec(f"GhostNetV1-{width:g}", GhostNetV1, {"width": width}, input_shape=(224, 224, 3),
                               normalization=IMAGENET_NORMALIZATION, reported={"ImageNet top-1": top1},
                               source="GhostNet paper, Table 7"))
    for width, top1 in ((1.0, 75.3), (1.3, 76.9), (1.6, 77.8)):
        specs.append(ModelSpec(f"GhostNetV2-{width:g}", GhostNetV2, {"width": width}, input_shape=(224, 224, 3),
                               normalization=IMAGENET_NORMALIZATION, reported={"ImageNet top-1": top1},
                               source="GhostNetV2 paper, Table 2"))
    return specs


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    """Add a variant to the registry (e.g. a custom width). Names must be unique, case-insensitively.

    Example:
        >>> register_model(ModelSpec("MyGhostFaceNet", GhostFaceNetV1, {"width": 0.75}))
    """
    key = canonical_name(spec.name)
    if key in _REGISTRY:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    _REGISTRY[key] = spec


for _spec in _ghostfacenet_specs() + _other_specs():
    register_model(_spec)


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry of `name` (case-insensitive); `ModelNameError` lists the known names.

    Example:
        >>> get_model_spec("ghostfacenetv1-1.3-1").config["use_bias"]
        True
    """
    try:
        return _REGISTRY[canonical_name(name)]
    except KeyError:
        raise ModelNameError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def list_models(pattern: str = "") -> list[str]:
    """Registered model names, optionally only those containing `pattern` (case-insensitive).

    Example:
        >>> list_models("MobileFaceNet")
        ['MobileFaceNet', 'MMobileFaceNet']
    """
    return [spec.name for spec in _REGISTRY.values() if pattern.lower() in spec.name.lower()]


def create_model(name: str, pretrained: bool | str | os.PathLike = False, **overrides) -> keras.Model:
    """Build a registered model by its paper name; keyword arguments override its defaults.

    Args:
        name: a registered name (`list_models()`), case-insensitive.
        pretrained: `False` (random initialization); `True`, the released checkpoint of this model
            (the best reported one, `ghostface_keras.weights.checkpoints.get_checkpoint(name)`; downloaded once and
            cached); or a checkpoint name (`list_pretrained()`) or the path of a `.keras`, Keras-3
            `.weights.h5` or official `.h5` file. Loaded through the builder's `weights=`.
        **overrides: builder arguments replacing the registered configuration.

    Raises:
        ModelNameError: unknown model, or `pretrained=True` for a model without released weights.
        ModelLoadError: weights that do not fit the model (e.g. an override changing the architecture).

    Example:
        >>> model = create_model("GhostFaceNetV2-1.3-2", embedding_size=256)
        >>> model.output_shape
        (None, 256)
        >>> model = create_model("GhostFaceNetV1-1.3-1", pretrained=True)          # doctest: +SKIP
        >>> model = create_model("GhostFaceNetV1-0.5-2", pretrained="GN_W0.5_S2_ArcFace_epoch16.h5")  # doctest: +SKIP
    """
    spec = get_model_spec(name)
    if pretrained is False or pretrained is None:
        return spec.build(**overrides)
    if "weights" in overrides:
        raise TypeError("create_model() got both pretrained= and weights=; pass only one")
    if pretrained is True:
        from ghostface_keras.weights.checkpoints import get_checkpoint

        try:
            pretrained = get_checkpoint(spec.name).name
        except ModelNameError:
            released = [other.name for other in _REGISTRY.values() if other.pretrained]
            raise ModelNameError(f"no released checkpoint for {spec.name}; models with released weights: "
                                 f"{', '.join(released)}") from None
    elif not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained must be a bool, a checkpoint name or a path, got {type(pretrained).__name__}")
    from ghostface_keras.weights.checkpoints import find_checkpoint

    source = os.fspath(pretrained)
    if not os.path.exists(source) and find_checkpoint(source) is not None:
        # a released checkpoint: its cached conversion (downloaded and converted once), copied by layer name
        from ghostface_keras.models.pretrained import load_pretrained
        from ghostface_keras.weights.apply import copy_by_name

        model = spec.build(**overrides)
        copy_by_name(load_pretrained(source), model, source)
        return model
    return spec.build(weights=source, **overrides)


def model_zoo_table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: name, params, MFLOPs (MACs), input, reported accuracy, released weights (default:
    every registered model). Builds each model once to count it; `ghostface_keras.core.tables` prints the rows.

    Example:
        >>> model_zoo_table(["MobileFaceNet"])[0]["params"]
        1220864
    """
    from ghostface_keras.models.flops import count_flops

    rows = []
    for name in names or list_models():
        spec = get_model_spec(name)
        model = spec.build()
        rows.append({
            "name": spec.name,
            "params": model.count_params(),
            "MFLOPs": round(count_flops(model) / 1e6, 1),
            "input": "x".join(str(d) for d in spec.input_shape),
            "reported": ", ".join(f"{k} {v:g}" for k, v in spec.reported.items()) or "-",
            "weights": spec.pretrained or "-",
        })
        keras.backend.clear_session()
    return rows
