"""Xception Explorer's core: the paper's Xception with its separable convolutions laid open.

No web code lives here. The public surface:

- the model: :class:`Xception`, :class:`XceptionConfig`, :class:`SeparableConv2d`
- its anatomy: :func:`profile_model`; the paper's spectrum: :func:`segment_spectrum`, :func:`layer_spectrum`
- looking inside: :func:`forward_with_capture`, :func:`capture`, :func:`decompose`
- what a channel is: :func:`visualise` (feature visualisation, :class:`VisualisationRequest`),
  the channel atlas (:func:`build_atlas`, :func:`open_atlas`, :class:`AtlasIndex`)
- weights: :func:`list_models`, :func:`load_model`, :func:`import_weights`,
  :func:`download_weights`, :func:`timm_to_ours`, :func:`ours_to_timm`
- images: :func:`decode_image` (safe decoding), :class:`PreprocessConfig`, :func:`eval_transform`
  and its inverse :func:`to_pixels`
- prediction: :func:`predict_logits`, :func:`classify`, :func:`top_k`, :func:`evaluate_folder`; fast prediction
  engines (BatchNorm folded; eager, torch.compile or onnxruntime; bf16/fp16): :class:`Predictor`
"""

from .atlas import AtlasBuildRequest, AtlasError, AtlasIndex, build_atlas, open_atlas
from .convert import StateDictMismatch, infer_timm_config, ours_to_timm, timm_to_ours
from .decode import ImageDecodeError, decode_image
from .engine import EngineInfo, Predictor
from .featurevis import VisualisationError, VisualisationRequest, VisualisationResult, visualise
from .inference import Prediction, classify, evaluate_folder, predict_logits, top_k
from .introspect import Decomposition, UnknownLayerError, capture, decompose, forward_with_capture
from .labels import imagenet_class_names, load_class_names
from .model import SeparableConv2d, Xception, XceptionConfig, xception
from .profile import ModelProfile, SpectrumPoint, layer_spectrum, profile_model, segment_spectrum
from .transform import PreprocessConfig, eval_transform, preprocess_bytes, to_pixels
from .weights import (
    BUNDLED_ID,
    ModelCard,
    WeightsError,
    default_model_id,
    download_weights,
    get_card,
    import_weights,
    list_models,
    load_model,
)

__all__ = [
    "AtlasBuildRequest",
    "AtlasError",
    "AtlasIndex",
    "VisualisationError",
    "VisualisationRequest",
    "VisualisationResult",
    "build_atlas",
    "open_atlas",
    "visualise",
    "BUNDLED_ID",
    "Decomposition",
    "EngineInfo",
    "ImageDecodeError",
    "ModelCard",
    "ModelProfile",
    "Prediction",
    "Predictor",
    "PreprocessConfig",
    "SeparableConv2d",
    "SpectrumPoint",
    "StateDictMismatch",
    "UnknownLayerError",
    "WeightsError",
    "Xception",
    "XceptionConfig",
    "capture",
    "classify",
    "decode_image",
    "decompose",
    "default_model_id",
    "download_weights",
    "eval_transform",
    "evaluate_folder",
    "forward_with_capture",
    "get_card",
    "imagenet_class_names",
    "import_weights",
    "infer_timm_config",
    "layer_spectrum",
    "list_models",
    "load_class_names",
    "load_model",
    "ours_to_timm",
    "predict_logits",
    "preprocess_bytes",
    "profile_model",
    "segment_spectrum",
    "timm_to_ours",
    "to_pixels",
    "top_k",
    "xception",
]
