"""The method table: every way this package fine-tunes an image classifier, in one place.

A method is a name (`kadaptation`, `lora`, `lokr`, `linear`, `bitfit`, `full`) mapped to how its PEFT config is built,
which parameters train, its default learning rate and the learning-rate grid `kadapt bench` searches. `kadapt train`,
`kadapt bench`, the Trainer and Accelerate examples and the docs' method table all read `METHODS`.

A *variant* is a method with settings, written as the method name followed by `key=value` pairs, e.g.
`"kadaptation n=32 slow_rank=1"` or `"lora r=1 alpha=1 targets=q_proj+k_proj+v_proj"` (see `VARIANT_KEYS`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import peft
from peft import LoKrConfig, LoraConfig, PeftConfig, get_peft_model
from torch import nn

from ..config import KAdaptationConfig, default_target_modules
from ..hub import read_adapter_config
from ..parametrization import DEFAULT_PARAMETRIZATION
from .backbones import DINOV2_SMALL_ALIAS, load_classifier


HEAD = "classifier"


@dataclass
class ModelArguments:
    """Which backbone, which method, and the method's settings (defaults are the libraries' own)."""

    model_name_or_path: str = field(
        default=DINOV2_SMALL_ALIAS,
        metadata={"help": f"Hub id, local path, or the offline alias {DINOV2_SMALL_ALIAS!r}."},
    )
    method: str = field(
        default="kadaptation",
        metadata={"help": "kadaptation, lora, lokr, linear (head only), bitfit (biases and head) or full."},
    )
    target_modules: str | None = field(
        default=None,
        metadata={"help": "Comma-separated module names to adapt; the model type's q/v projections when unset."},
    )
    kadapt_n: int = field(default=KAdaptationConfig.n, metadata={"help": "KAdaptation: number of Kronecker terms n."})
    kadapt_r: int = field(default=KAdaptationConfig.r, metadata={"help": "KAdaptation: rank r of each fast product."})
    kadapt_alpha: float | None = field(
        default=None, metadata={"help": "KAdaptation: scaling = alpha / sqrt(r); unset: the config's default."}
    )
    kadapt_slow_rank: int | None = field(
        default=KAdaptationConfig.slow_rank,
        metadata={"help": "KAdaptation: rank of each slow matrix A_i (unset: full n x n)."},
    )
    kadapt_slow_lr_ratio: float = field(
        default=KAdaptationConfig.slow_lr_ratio,
        metadata={"help": "KAdaptation: effective learning-rate multiplier of the slow weights A (with Adam)."},
    )
    share_slow_weights: str = field(
        default=KAdaptationConfig.share_slow_weights, metadata={"help": "KAdaptation: per_target, global or none."}
    )
    kadapt_parametrization: str = field(
        default="lora_matched",
        metadata={"help": "KAdaptation: lora_matched (LoRA's update size at the same alpha and lr) or legacy (0.1)."},
    )
    kadapt_config: str | None = field(
        default=None,
        metadata={
            "help": "A directory holding a KAdaptation adapter_config.json (e.g. the one `kadapt intrinsic-dim` "
            "recommends); replaces the other --kadapt_* flags and --target_modules."
        },
    )
    lora_r: int = field(default=LoraConfig.r, metadata={"help": "LoRA / LoKr rank."})
    lora_alpha: float = field(default=LoraConfig.lora_alpha, metadata={"help": "LoRA / LoKr alpha."})
    peft_options: str | None = field(
        default=None,
        metadata={
            "help": "The other PEFT methods (vera, fourierft, loha, ...): their config's fields as KEY=VALUE pairs "
            "separated by commas, e.g. 'r=4,alpha=8'; the PEFT library's defaults otherwise."
        },
    )


@dataclass(frozen=True)
class Method:
    """One row of the method table."""

    name: str
    trains: str  # in words, for docs and logs
    learning_rate: float  # default when none is given
    lr_grid: tuple[float, ...]  # searched on validation by `kadapt bench`
    peft_config: Callable[[ModelArguments, list[str]], PeftConfig] | None = None  # None: no adapter
    trainable: Callable[[str], bool] | None = None  # for methods without adapter: which parameters train
    peft_type: str | None = None  # what its adapter_config.json says (None: no adapter)
    # the field of its adapter scale: of ModelArguments, or of `options_class` for a peer (None: it has none)
    alpha_field: str | None = None
    alpha_grid: tuple[float, ...] = ()  # a peer's scales that `kadapt bench` searches with its learning rates
    rank_field: str | None = None  # the ModelArguments field of its rank
    quick_learning_rate: float = 1e-3  # the one learning rate of `kadapt bench --quick`
    options_class: type | None = None  # the PEFT config whose fields `peft_options` and the variant keys set

    @property
    def searches_alphas(self) -> bool:
        """Whether `kadapt bench --alphas` crosses this method's scale with its learning rates (KAdaptation, LoRA,
        LoKr); a peer searches its own `alpha_grid` instead, and a method without a scale searches none."""
        return self.options_class is None and self.alpha_field is not None


def _kadaptation(args: ModelArguments, targets: list[str]) -> PeftConfig:
    if args.kadapt_config:
        return _saved_kadaptation_config(args.kadapt_config)
    return KAdaptationConfig(
        n=args.kadapt_n,
        r=args.kadapt_r,
        alpha=args.kadapt_alpha,
        slow_rank=args.kadapt_slow_rank,
        slow_lr_ratio=args.kadapt_slow_lr_ratio,
        share_slow_weights=args.share_slow_weights,
        parametrization=args.kadapt_parametrization,
        target_modules=targets,
        modules_to_save=[HEAD],
    )


def _saved_kadaptation_config(path: str) -> KAdaptationConfig:
    peft_type = read_adapter_config(path).get("peft_type")
    if peft_type != "KADAPTATION":
        raise ValueError(f"--kadapt_config {path}: its adapter_config.json is a {peft_type} config, not KAdaptation.")
    config = KAdaptationConfig.from_pretrained(path)
    config.modules_to_save = [HEAD]
    config.inference_mode = False  # a config saved with a trained adapter is in inference mode: train it
    return config


PEFT_PREFIX = "base_model.model."  # where a PEFT model keeps the parameters of the model it wraps


def is_head(name: str) -> bool:
    """Whether a parameter of the classifier, or of a PEFT model wrapping it, belongs to the new head (the one rule)."""
    return name.removeprefix(PEFT_PREFIX).startswith(HEAD + ".")


def head_prefix(is_peft: bool) -> str:
    """The name prefix of the head's parameters (`is_head`'s rule, for the engine's `Recipe.prefix_learning_rates`)."""
    return f"{PEFT_PREFIX if is_peft else ''}{HEAD}."


# Each grid is centred on the rate validation chose most often in the few-shot studies of docs/results.md (50 steps,
# batch 16): adapters at their default alpha chose the top of (3e-4, 1e-3, 3e-3) in almost every split, BitFit and full
# fine-tuning the bottom of theirs, and one step beyond each edge (the frontier study's extension) confirmed the centre.
ADAPTER_LR_GRID = (1e-3, 3e-3, 1e-2)
METHODS: dict[str, Method] = {
    "kadaptation": Method(
        "kadaptation",
        "KAdaptation factors and the head",
        3e-3,
        ADAPTER_LR_GRID,
        _kadaptation,
        peft_type="KADAPTATION",
        alpha_field="kadapt_alpha",
        rank_field="kadapt_r",
    ),
    "lora": Method(
        "lora",
        "LoRA factors and the head",
        3e-3,
        ADAPTER_LR_GRID,
        lambda a, t: LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, target_modules=t, modules_to_save=[HEAD]),
        peft_type="LORA",
        alpha_field="lora_alpha",
        rank_field="lora_r",
    ),
    "lokr": Method(
        "lokr",
        "LoKr factors and the head",
        1e-2,
        ADAPTER_LR_GRID,
        lambda a, t: LoKrConfig(r=a.lora_r, alpha=a.lora_alpha, target_modules=t, modules_to_save=[HEAD]),
        peft_type="LOKR",
        alpha_field="lora_alpha",
        rank_field="lora_r",
    ),
    "linear": Method(
        "linear",
        "the head only (linear probe)",
        1e-2,
        (3e-3, 1e-2, 3e-2),
        trainable=is_head,
        quick_learning_rate=1e-2,
    ),
    "bitfit": Method(
        "bitfit",
        "every bias and the head",
        1e-3,
        (3e-4, 1e-3, 3e-3),
        trainable=lambda name: is_head(name) or name.endswith(".bias"),
    ),
    "full": Method("full", "every parameter", 1e-5, (3e-6, 1e-5, 3e-5), trainable=lambda name: True),
}


def _options(args: ModelArguments, config_class: type, scale_field: str | None = None) -> dict:
    """`--peft_options` "r=4,alpha=8" -> {"r": 4, "alpha": 8.0}, each value converted to the config field's type; the
    method's scale (`scale_field`) takes any number, as PEFT's layers divide it (LoHa: alpha / r) whatever its hint."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    out = {}
    for pair in filter(None, (args.peft_options or "").split(",")):
        key, sep, raw = pair.partition("=")
        if not sep or key.strip() not in fields:
            raise ValueError(
                f"--peft_options {args.peft_options!r}: {pair!r} is not KEY=VALUE with KEY a field of "
                f"{config_class.__name__} ({', '.join(sorted(fields))})."
            )
        key = key.strip()
        out[key] = _typed(config_class, key, _literal(raw.strip()), args.peft_options, key == scale_field)
    return out


def _typed(config_class: type, key: str, value, flag: str, any_number: bool = False):
    """`value` if the config field `key` can hold it (an int where a float is expected becomes a float; a float where
    an int is expected only with `any_number`), else a ValueError that names the key and the type."""
    hint = typing.get_type_hints(config_class).get(key)
    allowed = [a for a in (typing.get_args(hint) or (hint,)) if isinstance(a, type)]
    if not allowed or any(isinstance(value, a) and not (a is int and isinstance(value, bool)) for a in allowed):
        return value
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if any_number and isinstance(value, float):
        return value
    names = " or ".join(a.__name__ for a in allowed if a is not type(None))
    raise ValueError(f"--peft_options {flag!r}: {key}={value!r} is not {names} ({config_class.__name__}.{key}).")


def _literal(raw: str):
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def _peer(config_class: type, scale_field: str | None):
    """A PEFT method that this package trains as PEFT configures it: its options, the targets, the head saved."""

    def build(args: ModelArguments, targets: list[str]) -> PeftConfig:
        options = _options(args, config_class, scale_field)
        if config_class is peft.IA3Config:  # (IA)³ scales the input of the MLP's output layer, as its paper does
            options.setdefault("feedforward_modules", [t for t in targets if t in FEEDFORWARD_OUTPUTS])
        return config_class(**options, target_modules=targets, modules_to_save=[HEAD])

    return build


FEEDFORWARD_OUTPUTS = ("fc2", "output.dense", "mlp.fc2", "down_proj")


# Tiny-adapter peers of KAdaptation in peft 0.21 (issue 29): name -> (config class, what trains, default learning rate,
# grid). Each grid is centred where a pilot put the peer's best validation accuracy (benchmarks/peer_lr_pilot.sh:
# two 56 px splits, the ~20k size on q/v, the head at 3e-3; docs/results.md), and widened by the bench's edge
# extension in the study. Most train best at 1e-2 to 3e-2, VeRA and (IA)³ at 3e-2, FourierFT (at scaling 75) at 1e-1,
# C3A (whose update is divided by the layer's width) at 3e-1, TinyLoRA (which moves the weight's top singular
# directions) at 1e-3 to 3e-3.
PEERS = {
    "vera": (peft.VeraConfig, "VeRA scaling vectors (frozen shared random projections) and the head", 3e-2, (1e-2, 3e-2, 1e-1)),
    "pvera": (peft.PveraConfig, "PVeRA scaling vectors and the head", 3e-2, (1e-2, 3e-2, 1e-1)),
    "fourierft": (peft.FourierFTConfig, "FourierFT spectral coefficients and the head", 1e-1, (3e-2, 1e-1, 3e-1)),
    "vblora": (peft.VBLoRAConfig, "VB-LoRA's vector bank and logits, and the head", 1e-2, (3e-3, 1e-2, 3e-2)),
    "loha": (peft.LoHaConfig, "LoHa (Hadamard) factors and the head", 1e-2, (3e-3, 1e-2, 3e-2)),
    "ia3": (peft.IA3Config, "(IA)³ scaling vectors and the head", 3e-2, (1e-2, 3e-2, 1e-1)),
    "oft": (peft.OFTConfig, "OFT orthogonal blocks and the head", 1e-2, (3e-3, 1e-2, 3e-2)),
    "lily": (peft.LilyConfig, "Lily's shared factors and the head", 1e-2, (3e-3, 1e-2, 3e-2)),
    "tinylora": (peft.TinyLoraConfig, "TinyLoRA vectors (frozen random projections) and the head", 1e-3, (3e-4, 1e-3, 3e-3)),
    "c3a": (peft.C3AConfig, "C3A circulant kernels and the head", 3e-1, (1e-1, 3e-1, 1.0)),
}  # fmt: skip
# The peers whose documentation says to tune a scale: its config field and the values `kadapt bench` searches with the
# learning rates (FourierFT: PEFT's default 150 and half of it: it also scales FourierFT's default random initial
# spectrum, which the frontier study replaces by zeros, `init_weights=True`, and the pilot found 300, PEFT's advice for
# ViTs trained for epochs, far below both in 50 steps; LoHa: the alphas the frontier study searches for LoRA; Lily: a
# decade either side of the 1.0 its documentation starts from). A variant that writes the field (`fourierft
# scaling=300`) trains at that value only.
PEER_SCALES = {
    "fourierft": ("scaling", (75.0, 150.0)),
    "loha": ("alpha", (1.0, 4.0, 16.0)),
    "lily": ("scaling", (0.1, 1.0, 10.0)),
}
for _name, (_cls, _trains, _lr, _grid) in PEERS.items():
    _field, _scales = PEER_SCALES.get(_name, (None, ()))
    METHODS[_name] = Method(
        _name,
        _trains,
        _lr,
        _grid,
        _peer(_cls, _field),
        peft_type=_name.upper(),
        options_class=_cls,
        quick_learning_rate=_lr,
        alpha_field=_field,
        alpha_grid=_scales,
    )


def with_alpha(args: ModelArguments, alpha: float) -> ModelArguments:
    """`args` with its method's adapter scale set to `alpha`: a ModelArguments field, or a peer's config field written
    into `peft_options` (replacing the one there)."""
    method = get_method(args.method)
    if method.alpha_field is None:
        raise ValueError(f"Method {method.name!r} has no adapter scale to set to {alpha:g}.")
    if method.options_class is None:
        return replace(args, **{method.alpha_field: alpha})
    kept = [p for p in (args.peft_options or "").split(",") if p and p.partition("=")[0].strip() != method.alpha_field]
    return replace(args, peft_options=",".join([*kept, f"{method.alpha_field}={alpha:g}"]))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"`method` must be one of {tuple(METHODS)}, got {name!r}.")
    return METHODS[name]


def target_modules(args: ModelArguments, model: nn.Module) -> list[str]:
    """--target_modules split on commas, or the model type's default (one rule, in `peft_kadapt.config`)."""
    if args.target_modules:
        return [t.strip() for t in args.target_modules.split(",") if t.strip()]
    return default_target_modules(getattr(model.config, "model_type", None))


def build_model(args: ModelArguments, labels: list[str]) -> tuple[nn.Module, bool]:
    """The backbone with a new `classifier` head for `labels` and the method applied; returns (model, is_peft)."""
    method = get_method(args.method)
    model = load_classifier(args.model_name_or_path, labels)
    if not hasattr(model, HEAD):
        raise ValueError(f"{type(model).__name__} has no `{HEAD}` head; only classifiers with one are supported.")
    if method.peft_config is None:
        for name, param in model.named_parameters():
            param.requires_grad = method.trainable(name)
        return model, False
    targets = None if args.kadapt_config else target_modules(args, model)
    try:
        return get_peft_model(model, method.peft_config(args, targets)), True
    except ValueError as error:
        if method.options_class is None:
            raise
        raise ValueError(
            f"{method.name} does not fit {args.model_name_or_path} as configured: {error} Size it with fields of "
            f"{method.options_class.__name__}: `--peft_options KEY=VALUE,...` (kadapt train) or KEY=VALUE in the "
            "variant (kadapt bench)."
        ) from error


# Variants: "METHOD key=value ..." -> ModelArguments. Keys common to several methods map by method.
VARIANT_KEYS = {
    "kadaptation": {
        "n": "kadapt_n",
        "r": "kadapt_r",
        "alpha": "kadapt_alpha",
        "slow_rank": "kadapt_slow_rank",
        "slow_lr": "kadapt_slow_lr_ratio",
        "share": "share_slow_weights",
        "parametrization": "kadapt_parametrization",
        "targets": "target_modules",
    },
    "lora": {"r": "lora_r", "alpha": "lora_alpha", "targets": "target_modules"},
    "lokr": {"r": "lora_r", "alpha": "lora_alpha", "targets": "target_modules"},
    "linear": {},
    "bitfit": {},
    "full": {},
}


def canonical_variant(variant: str, parametrization: str = DEFAULT_PARAMETRIZATION) -> str:
    """A KAdaptation variant with its parametrization named (`parametrization`, the default, when it names none), so
    that runs of the two parametrizations never share a name in records; other methods' variants as they are."""
    name, *pairs = variant.split()
    if name != "kadaptation" or any(p.startswith("parametrization=") for p in pairs):
        return variant
    at = next((i for i, p in enumerate(pairs) if p.startswith("targets=")), len(pairs))
    return " ".join([name, *pairs[:at], f"parametrization={parametrization}", *pairs[at:]])


def parse_variant(variant: str, **defaults) -> ModelArguments:
    """`"kadaptation n=32 slow_rank=1"` -> `ModelArguments(method="kadaptation", kadapt_n=32, kadapt_slow_rank=1)`.

    `targets` takes module names joined by `+`. `defaults` (e.g. `model_name_or_path=...`) fill the other fields. For
    the peer methods (`vera r=256`, `loha r=4 alpha=8`) the keys are their PEFT config's fields.
    """
    name, *pairs = variant.split()
    method = get_method(name)
    if method.options_class is not None:
        options = [p for p in pairs if not p.startswith("targets=")]
        targets = [p.partition("=")[2] for p in pairs if p.startswith("targets=")]
        base = replace(ModelArguments(**defaults), method=name, peft_options=",".join(options) or None)
        if targets:
            base = replace(base, target_modules=targets[-1].replace("+", ","))
        _options(base, method.options_class, method.alpha_field)  # errors now, naming the variant's key
        return base
    keys = VARIANT_KEYS[method.name]
    types = typing.get_type_hints(ModelArguments)  # resolved types (HfArgumentParser rewrites `Field.type` in place)
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in keys:
            raise ValueError(
                f"Variant {variant!r}: {pair!r} is not KEY=VALUE with KEY one of {sorted(keys) or 'none'} "
                f"(for method {name!r})."
            )
        field_name = keys[key]
        values[field_name] = _convert(raw.replace("+", ","), types[field_name], variant)
    return replace(ModelArguments(**defaults), method=name, **values)


def _convert(raw: str, annotation, variant: str):
    kind = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)  # `int | None` -> int
    try:
        return (kind if kind in (int, float) else str)(raw)
    except ValueError:
        raise ValueError(f"Variant {variant!r}: {raw!r} is not a valid {kind.__name__}.") from None


def methods_markdown() -> str:
    """The method table as markdown (docs/training.md holds this text; a test keeps the two equal)."""
    lines = ["| method | trains | default learning rate | `kadapt bench` grid |", "|---|---|---|---|"]
    for m in METHODS.values():
        grid = ", ".join(f"{lr:g}" for lr in m.lr_grid)
        if m.alpha_grid:
            grid += f" × `{m.alpha_field}` " + ", ".join(f"{a:g}" for a in m.alpha_grid)
        lines.append(f"| `{m.name}` | {m.trains} | {m.learning_rate:g} | {grid} |")
    return "\n".join(lines)
