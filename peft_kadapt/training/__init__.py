"""Training, data, benchmarking and the intrinsic-dimension sweep around the KAdaptation tuner.

Needs the `train` extra (`pip install peft-kadapt[train]`: datasets, accelerate, matplotlib, onnx, pillow). The core
package (`import peft_kadapt`) never imports this one.
"""

import importlib.util as _util


_missing = [name for name in ("datasets", "accelerate", "matplotlib", "PIL") if _util.find_spec(name) is None]
if _missing:
    raise ImportError(
        f"peft_kadapt.training needs {', '.join(_missing)}: install the training extra with "
        "`pip install 'peft-kadapt[train]'`. The tuner itself (`import peft_kadapt`) does not need them."
    )

from .backbones import (
    DINOV2_SMALL_ALIAS,
    check_resolution,
    image_normalization,
    load_classifier,
    pos_encoding_kwargs,
    resolve_model,
)
from .data import OFFLINE_DATASETS, few_shot, image_transform, load_image_dataset, to_tensors
from .engine import Recipe, Scores, evaluate, fit
from .methods import HEAD, METHODS, Method, ModelArguments, build_model, get_method, is_head, parse_variant, with_alpha
from .metrics import load_accuracy
from .outputs import claim_output_dir, load_checkpoint_weights, staged, write_atomically
from .plotting import plot_training_curve


__all__ = [
    "DINOV2_SMALL_ALIAS",
    "HEAD",
    "METHODS",
    "OFFLINE_DATASETS",
    "Method",
    "ModelArguments",
    "Recipe",
    "Scores",
    "build_model",
    "check_resolution",
    "load_classifier",
    "claim_output_dir",
    "load_accuracy",
    "load_checkpoint_weights",
    "staged",
    "write_atomically",
    "evaluate",
    "few_shot",
    "fit",
    "get_method",
    "image_normalization",
    "image_transform",
    "is_head",
    "load_image_dataset",
    "parse_variant",
    "plot_training_curve",
    "pos_encoding_kwargs",
    "resolve_model",
    "to_tensors",
    "with_alpha",
]
