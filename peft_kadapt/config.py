"""Configuration of a KAdaptation adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig
from peft.utils import PeftType

from ._registration import ensure_peft_type
from .parametrization import DEFAULT_ALPHA, DEFAULT_PARAMETRIZATION, PARAMETRIZATIONS


SHARE_SLOW_WEIGHTS = ("per_target", "global", "none")
FORWARD_MODES = ("auto", "factored", "materialized")
BIAS_OPTIONS = ("none", "all", "kadapt_only")

# Query and value projections of the vision transformers users adapt, under transformers 4.x and 5.x names.
_QV = ["query", "value", "q_proj", "v_proj"]
TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING: dict[str, list[str]] = {
    model_type: list(_QV)
    for model_type in (
        "vit",
        "vit_mae",
        "vit_msn",
        "vit_hybrid",
        "deit",
        "dinov2",
        "dinov2_with_registers",
        "dinov3_vit",
        "beit",
        "data2vec-vision",
        "swin",
        "swinv2",
        "clip",
        "clip_vision_model",
        "siglip",
        "siglip_vision_model",
        "siglip2",
        "siglip2_vision_model",
    )
}
# GPT-2-style models: the fused q/k/v projection (transformers' Conv1D), as PEFT's LoRA defaults to
TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING["gpt2"] = ["c_attn"]
# ConvNeXt: the two pointwise convolutions of every block (implemented as nn.Linear in transformers)
TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING["convnext"] = ["pwconv1", "pwconv2"]


def default_target_modules(model_type: str | None) -> list[str]:
    """The query and value projections KAdaptation adapts by default on `model_type`; a `ValueError` if none is known.

    The one place where defaults are resolved: the tuner, the parameter report and the training tools all call it.
    """
    if model_type not in TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING:
        raise ValueError(
            f"There are no default `target_modules` for model type {model_type!r}. Pass `target_modules` (e.g. "
            "['q_proj', 'v_proj'], or --target_modules q_proj,v_proj on the command line). Model types with "
            f"defaults: {sorted(TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING)}."
        )
    return list(TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING[model_type])


def sharing_group(share_slow_weights: str, target_name: str, module_name: str) -> str:
    """The key of the A-set an adapted layer uses: "global" (one for all), its target-module name ("per_target", e.g.
    every `q_proj` shares one), or its own full name ("none"; dots become "__", which container keys cannot hold)."""
    if share_slow_weights == "global":
        return "global"
    if share_slow_weights == "per_target":
        return target_name
    return module_name.replace(".", "__")


@dataclass
class KAdaptationConfig(PeftConfig):
    """
    Configuration of a [`KAdaptationModel`]: Kronecker adaptation (He et al., "Parameter-efficient Model Adaptation
    for Vision Transformers", AAAI 2023, https://huggingface.co/papers/2203.16329).

    Each adapted linear layer with weight of shape (k, d) = (out_features, in_features) gets the additive update

        ΔW = scaling · Σ_{i=1..n} A_i ⊗ (u_i v_iᵀ),    scaling = alpha / sqrt(r)

    where the n "slow" matrices A_i (n × n) are shared by every layer of a sharing group and the "fast" factors
    u_i (k/n × r) and v_i (d/n × r) belong to one layer. A layer costs r·(k + d) trainable parameters, like LoRA at
    rank r; each sharing group costs n³ once (2·n²·slow_rank with `slow_rank`). rank(ΔW) can reach min(n²·r, k, d)
    (min(n·slow_rank·r, k, d) with `slow_rank`).

    Args:
        n (`int`):
            Number of Kronecker terms, also the size of each A_i. Must divide the in and out features of every
            targeted layer. Defaults to 8, chosen on this package's few-shot benchmarks (docs/kadaptation.md,
            "Choosing the defaults"); pass `n=32` for the paper's setting.
        r (`int`):
            Rank of each fast product u_i v_iᵀ. Defaults to 1, the paper's value.
        alpha (`float`):
            Scale of the update, as LoRA's `lora_alpha`: `scaling = alpha / sqrt(r)` (`parametrization="legacy"`:
            `alpha / sqrt(n * r)`). Under the default parametrisation a step at a given alpha and learning rate moves
            each adapted layer about as far as a LoRA step does at the same alpha and learning rate, whatever n, r and
            the layer's width, so settings that work for LoRA work here (docs/kadaptation.md). `None` (default): 16.0
            (4.0 with `parametrization="legacy"`, its old default).
        kadapt_dropout (`float`):
            Dropout probability on the input of the adapter branch (as LoRA's `lora_dropout`). Defaults to 0.0.
        target_modules (`Optional[Union[list[str], str]]`):
            Names of the modules to adapt: a list of exact names or name suffixes, or a regex string. When `None`, the
            query and value projections are chosen for known vision models (ViT, DeiT, DINOv2, BEiT, Swin, CLIP and
            SigLIP vision towers), under transformers 4.x (`query`, `value`) and 5.x (`q_proj`, `v_proj`) names.
        exclude_modules (`Optional[Union[list[str], str]]`):
            Names of modules not to adapt: a list of exact names or suffixes, or a regex string.
        modules_to_save (`Optional[list[str]]`):
            Modules besides the adapted layers that train and are saved, e.g. `["classifier"]` for a new head.
        layers_to_transform (`Optional[Union[list[int], int]]`):
            Indices of the blocks to adapt; all blocks when `None`.
        layers_pattern (`Optional[Union[list[str], str]]`):
            Name of the `nn.ModuleList` holding the blocks (e.g. `"layers"` or `"layer"`); only used with
            `layers_to_transform`.
        init_weights (`bool`):
            `True` (default): ΔW = 0 at step 0 and every factor receives gradient from the first optimiser step on:
            u_i = 0, v_i ~ N(0, 1/(3·in_features)), A_i ~ N(0, 1/n), as LoRA starts B = 0 with a random A (legacy:
            u_i ~ N(0, 0.1²), v_i = 0, A_i ~ N(0, 1)). The official code zeroes u and v, so its Kronecker term never
            trains. `False`: u_i random too, a random non-zero ΔW, for tests.
        share_slow_weights (`str`):
            Which layers share one A-set. `"per_target"` (default, the paper's choice): one A-set per target-module
            name (e.g. all `q_proj` layers share one, all `v_proj` layers another). `"global"`: one A-set for every
            adapted layer. `"none"`: one A-set per layer.
        slow_rank (`Optional[int]`):
            `None` (default): each A_i is a full n × n matrix, n³ parameters per sharing group. An integer ρ in [1, n]:
            each A_i = a_i c_iᵀ with a_i, c_i of shape n × ρ, 2·n²·ρ parameters per group (the official code uses
            ρ = 1). Lowers the rank bound of ΔW from n²·r to n·ρ·r.
        slow_lr_ratio (`float`):
            How much faster the shared slow weights A learn than the fast ones under Adam-type optimisers, as a
            reparametrisation: A = slow_lr_ratio · Â with Â the stored tensor, initialised so that A keeps its
            distribution. With Adam each stored entry moves by about the learning rate per step, so A moves
            `slow_lr_ratio` times as far (√slow_lr_ratio per factor with `slow_rank`). Defaults to 1.0 (no change);
            how far A moves in practice is measured in docs/results.md.
        forward_mode (`str`):
            How the adapter branch is computed. `"factored"` uses the Kronecker identity and never builds ΔW;
            `"materialized"` builds ΔW once per forward and folds it into the base matmul; `"auto"` (default) picks
            the cheaper one per layer and call with a cost model (docs/kadaptation.md). All give the same result up
            to rounding.
        bias (`str`):
            Which biases train beside the adapter, as LoRA's `bias`: `"none"` (default), `"all"` (every bias of the
            model), or `"kadapt_only"` (the biases of the adapted layers; the official code trains such a bias next to
            the Kronecker term). Trained biases are saved with the adapter. They are the base model's own biases, so
            disabling or unmerging the adapter does not restore the original ones.
        parametrization (`str`):
            How the factors start and how the update is scaled. `"lora_matched"` (default): as above, chosen so that
            alpha and the learning rate mean what they mean for LoRA and need no re-tuning when n, r or the targets
            change. `"legacy"`: peft_kadapt 0.1's (u ~ N(0, 0.1²), v = 0, A ~ N(0, 1), `alpha / sqrt(n * r)`), whose
            update grew with the layer's input width; an adapter_config.json without this field was saved by 0.1
            and loads as `"legacy"`, so its outputs do not change.
    """

    n: int = field(default=8, metadata={"help": "Number of Kronecker terms; must divide in/out features."})
    r: int = field(default=1, metadata={"help": "Rank of each fast product u_i v_iᵀ."})
    alpha: float | None = field(
        default=None, metadata={"help": "Scale of the update: scaling = alpha / sqrt(r); 16 when None (legacy: 4)."}
    )
    kadapt_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter branch input."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (exact or suffix) or a regex to adapt; q/v projections of known vision models "
            "when None."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names (exact or suffix) or a regex not to adapt."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides the adapted layers to train and save, e.g. ['classifier']."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Indices of the blocks to adapt; all when None."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the ModuleList of blocks; only with layers_to_transform."}
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: ΔW = 0 at start, every factor trains. False: random non-zero ΔW (tests)."},
    )
    share_slow_weights: Literal["per_target", "global", "none"] = field(
        default="per_target", metadata={"help": "Sharing of the A-set: 'per_target', 'global' or 'none'."}
    )
    slow_rank: int | None = field(
        default=None,
        metadata={"help": "None: full n×n slow matrices; an integer ρ in [1, n]: A_i = a_i c_iᵀ, rank ρ."},
    )
    slow_lr_ratio: float = field(
        default=1.0, metadata={"help": "Effective learning-rate multiplier of the slow weights A (Adam), by reparam."}
    )
    forward_mode: Literal["auto", "factored", "materialized"] = field(
        default="auto", metadata={"help": "'auto', 'factored' or 'materialized' adapter branch."}
    )
    bias: Literal["none", "all", "kadapt_only"] = field(
        default="none",
        metadata={"help": "Biases that train: 'none', 'all', or 'kadapt_only' (of the adapted layers)."},
    )
    parametrization: Literal["lora_matched", "legacy"] | None = field(
        default=None,
        metadata={
            "help": "'lora_matched' (default): the update of LoRA at the same alpha and learning rate; 'legacy': "
            "peft_kadapt 0.1's init and scaling (adapters saved by 0.1 load with it)."
        },
    )

    def __post_init__(self):
        ensure_peft_type()
        self._check_module_names()  # PEFT turns a list into a set: check the type first
        # a config that arrives with its peft_type was read from a file; one without `parametrization` was saved by
        # peft_kadapt 0.1, whose adapters trained under what is now "legacy"
        from_file = self.peft_type is not None
        super().__post_init__()
        self.peft_type = PeftType.KADAPTATION
        if self.parametrization is None:
            self.parametrization = "legacy" if from_file else DEFAULT_PARAMETRIZATION
        _require_choice("parametrization", self.parametrization, PARAMETRIZATIONS)
        if self.alpha is None:
            self.alpha = DEFAULT_ALPHA[self.parametrization]
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            setattr(self, name, set(value) if isinstance(value, list) else value)
        self._check_sizes()
        self._check_numbers()
        self._check_module_names()
        self._check_layers()
        for name, allowed in (
            ("bias", BIAS_OPTIONS),
            ("share_slow_weights", SHARE_SLOW_WEIGHTS),
            ("forward_mode", FORWARD_MODES),
        ):
            _require_choice(name, getattr(self, name), allowed)

    def _check_sizes(self) -> None:
        for name in ("n", "r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` should be a positive integer value but the value passed is {value!r}.")
        rho = self.slow_rank
        if rho is not None and (isinstance(rho, bool) or not isinstance(rho, int) or not 1 <= rho <= self.n):
            raise ValueError(
                f"`slow_rank` should be None (full n×n slow matrices) or an integer between 1 and n={self.n}, but the "
                f"value passed is {rho!r}."
            )

    def _check_numbers(self) -> None:
        if not _is_number(self.alpha) or not math.isfinite(self.alpha) or self.alpha == 0:
            raise ValueError(
                f"`alpha` should be a finite, non-zero number (the update's scale) but the value passed is "
                f"{self.alpha!r}."
            )
        if not _is_number(self.slow_lr_ratio) or not math.isfinite(self.slow_lr_ratio) or self.slow_lr_ratio <= 0:
            raise ValueError(
                f"`slow_lr_ratio` should be a finite positive number but the value passed is {self.slow_lr_ratio!r}."
            )
        if not _is_number(self.kadapt_dropout) or not 0.0 <= self.kadapt_dropout < 1.0:
            raise ValueError(f"`kadapt_dropout` should be in [0, 1) but the value passed is {self.kadapt_dropout!r}.")
        if not isinstance(self.init_weights, bool):
            raise ValueError(f"`init_weights` should be True or False but the value passed is {self.init_weights!r}.")

    def _check_module_names(self) -> None:
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if value is None or isinstance(value, str):
                continue
            if not isinstance(value, (list, set, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(
                    f"`{name}` should be a list of module names or a regex string but the value passed is {value!r}."
                )

    def _check_layers(self) -> None:
        if self.layers_to_transform is not None:
            layers = self.layers_to_transform
            indices = [layers] if isinstance(layers, int) else layers
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
                raise ValueError(
                    "`layers_to_transform` should be a non-negative block index or a list of them but the value passed "
                    f"is {layers!r}."
                )
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("`layers_pattern` cannot be used when `target_modules` is a str.")
        if self.layers_pattern and not self.layers_to_transform:
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")


def _require_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` should be one of {allowed} but the value passed is {value!r}.")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
