"""KAdaptation layers: the per-module maths wired into PEFT's tuner-layer contract."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils import resolve_quantization_backend
from torch import nn
from transformers.pytorch_utils import Conv1D

from .base_weight import gathered, read_weight, weight_shape, write_weight
from .config import KAdaptationConfig
from .functional import kron_delta_weight, kron_forward, prefer_factored, slow_matrices
from .parametrization import fast_init_stds, scaling


SLOW = "kadapt_A"  # model-level container of the slow weights: full A_i, or left factors a_i with `slow_rank`
SLOW_RIGHT = "kadapt_A_right"  # right factors c_i with `slow_rank`
SUPPORTED_LAYER_TYPES = (
    "torch.nn.Linear",
    "transformers.pytorch_utils.Conv1D",
    "torch.nn.Conv2d (groups=1)",
    "the quantised linear layers of PEFT's quantisation backends (bitsandbytes, HQQ, torchao, ...)",
)


def divisors_of_both(a: int, b: int) -> list[int]:
    g = math.gcd(a, b)
    return [m for m in range(1, g + 1) if g % m == 0]


def check_n_divides(n: int, in_features: int, out_features: int, module_name: str) -> None:
    if in_features % n or out_features % n:
        raise ValueError(
            f"KAdaptation needs `n` to divide both the in and out features of every adapted layer, but module "
            f"{module_name!r} has weight shape ({out_features}, {in_features}) and n={n}. Values of n that would "
            f"work for it: {divisors_of_both(in_features, out_features)}. Change `n`, or leave this module out with "
            "`exclude_modules`."
        )


def features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a supported layer, from its attributes (a ZeRO-3 or 4-bit weight's stored shape
    is not its shape): transformers' Conv1D (GPT-2) stores (in, out); a Conv2d kernel is an (out, in·kh·kw) matrix."""
    if isinstance(module, Conv1D):
        return module.nx, module.nf
    if isinstance(module, nn.Conv2d):
        shape = weight_shape(module)
        return shape[1] * shape[2] * shape[3], shape[0]
    return module.in_features, module.out_features


def check_supported(module: nn.Module, module_name: str) -> None:
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise TypeError(
            f"KAdaptation cannot adapt module {module_name!r}: a grouped or depthwise Conv2d (groups={module.groups}). "
            "Only groups=1 convolutions are supported; leave it out with `exclude_modules`."
        )
    if isinstance(module, (nn.Linear, Conv1D, nn.Conv2d)) or _quantized_linear(module):
        return
    raise TypeError(
        f"KAdaptation cannot adapt module {module_name!r} of type {type(module).__name__}. Supported types: "
        f"{', '.join(SUPPORTED_LAYER_TYPES)}. Remove it from `target_modules` or add it to `exclude_modules`."
    )


def _quantized_linear(module: nn.Module) -> bool:
    """A linear layer of a quantisation library PEFT knows (HQQ, AQLM, GPTQ, ...), not an `nn.Linear` subclass."""
    try:
        backend = resolve_quantization_backend(module, get_apply_tensor_subclass=lambda: None)
    except (ImportError, ValueError):
        return False
    return backend is not None and backend.layer_type == "linear"


class KAdaptationLayer(BaseTunerLayer):
    # Per-adapter trainable containers. The slow weights A are not among them: one model-level container per adapter
    # (`KAdaptationModel.kadapt_A`, and `kadapt_A_right` with `slow_rank`) owns them, and a layer holds an unregistered
    # reference to it (`_slow_owner`), so every engine that walks the module tree (FSDP per block, ZeRO-3, `.to()`,
    # state_dict) meets each A-set exactly once, above the blocks.
    adapter_layer_names = ("kadapt_u", "kadapt_v")
    other_param_names = (
        "n",
        "r",
        "scaling",
        "kadapt_dropout",
        "slow_key",
        "slow_rank",
        "forward_mode",
        "parametrization",
    )

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.n: dict[str, int] = {}
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.slow_key: dict[str, str] = {}
        self.slow_rank: dict[str, int | None] = {}
        self.forward_mode: dict[str, str] = {}
        self.parametrization: dict[str, str] = {}
        self.kadapt_dropout = nn.ModuleDict({})
        self.kadapt_u = nn.ParameterDict({})
        self.kadapt_v = nn.ParameterDict({})
        self._slow_owner: dict[str, nn.ModuleDict] = {}  # {"kadapt_A": ..., "kadapt_A_right": ...}, not registered
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        check_supported(base, type(base).__name__)
        # PEFT's quantisation backend for a quantised base (None for a float one): how merges read and write W
        self.quantization_backend = resolve_quantization_backend(
            base, get_apply_tensor_subclass=kwargs.get("get_apply_tensor_subclass")
        )
        self.in_features, self.out_features = features(base)
        self.fan_in_fan_out = isinstance(base, Conv1D)  # weight stored as (in, out), as LoRA names it

    def update_layer(
        self,
        adapter_name: str,
        slow_owner: dict[str, nn.ModuleDict],
        slow_key: str,
        config: KAdaptationConfig,
        module_name: str = "",
        inference_mode: bool = False,
    ) -> None:
        n, r = config.n, config.r
        check_n_divides(n, self.in_features, self.out_features, module_name or type(self).__name__)
        self.n[adapter_name], self.r[adapter_name] = n, r
        self.scaling[adapter_name] = scaling(config.parametrization, config.alpha, n, r, config.slow_lr_ratio)
        self.parametrization[adapter_name] = config.parametrization
        self.slow_key[adapter_name] = slow_key
        self.slow_rank[adapter_name] = config.slow_rank
        self.forward_mode[adapter_name] = config.forward_mode
        dropout = nn.Dropout(p=config.kadapt_dropout) if config.kadapt_dropout > 0 else nn.Identity()
        self.kadapt_dropout[adapter_name] = dropout
        self.kadapt_u[adapter_name] = nn.Parameter(torch.empty(self.out_features // n, n, r))  # u[:, i] = u_i
        self.kadapt_v[adapter_name] = nn.Parameter(torch.empty(self.in_features // n, n, r))  # v[:, i] = v_i
        self._slow_owner = slow_owner  # the same dict object in every layer of the model: looked up at forward time
        self.reset_kadapt_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    @torch.no_grad()
    def reset_kadapt_parameters(self, adapter_name: str, init_weights: bool) -> None:
        if self.kadapt_u[adapter_name].is_meta:
            return
        # one fast factor at 0 gives ΔW = 0 while the other's gradient is not: every factor trains from the first step
        u_std, v_std = fast_init_stds(self.parametrization[adapter_name], self.in_features, init_weights)
        for param, std in ((self.kadapt_u[adapter_name], u_std), (self.kadapt_v[adapter_name], v_std)):
            nn.init.normal_(param, std=std) if std > 0 else nn.init.zeros_(param)

    def slow_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(A, None) for full slow matrices, (a, c) with A_i = a_i c_iᵀ for factorised ones: the owner's tensors now
        (whatever FSDP or DeepSpeed has put there for this forward)."""
        key = self.slow_key[adapter_name]
        left = self._slow_owner[SLOW][adapter_name][key]
        if self.slow_rank[adapter_name] is None:
            return left, None
        return left, self._slow_owner[SLOW_RIGHT][adapter_name][key]

    def slow_weights(self, adapter_name: str) -> torch.Tensor:
        """The (n, n, n) stack of A_i (built from its factors when factorised)."""
        return slow_matrices(*self.slow_factors(adapter_name))

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW of one adapter in the base weight's logical shape, (out_features, in_features), (in, out) for transformers'
        Conv1D or the kernel's shape for Conv2d; in the weight's dtype, or in the adapter's float dtype when the weight
        is quantised (casting ΔW to int8 would destroy it). Under ZeRO-3 the factors are gathered to compute it."""
        (A_left, A_right), u, v = (
            self.slow_factors(adapter_name),
            self.kadapt_u[adapter_name],
            self.kadapt_v[adapter_name],
        )
        base = self.get_base_layer()
        # CPU matmuls in half precision are slow and lossy: compute in fp32 there, as LoRA does
        compute_dtype = (
            torch.float32 if (u.device.type == "cpu" and u.dtype in (torch.float16, torch.bfloat16)) else u.dtype
        )
        with gathered([u, v, A_left, A_right]):
            A = slow_matrices(A_left, A_right).to(compute_dtype)
            delta = kron_delta_weight(A, u.to(compute_dtype), v.to(compute_dtype), self.scaling[adapter_name])
        delta = (delta.T if self.fan_in_fan_out else delta).reshape(weight_shape(base))
        return delta if self.quantization_backend else delta.to(base.weight.dtype)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return not self.fan_in_fan_out

    def _add_to_base_weight(self, adapter_name: str, sign: int, safe: bool = False) -> None:
        """W ← W ± ΔW in the weight's own format: gathered under ZeRO-3 (rank 0's result kept), dequantised, summed in
        float and quantised again for a bitsandbytes weight."""
        with gathered([getattr(self.get_base_layer(), "weight", None)], modifier_rank=0):
            delta = self.get_delta_weight(adapter_name)
            merged = read_weight(self, delta.dtype) + sign * delta
            if safe and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter_name} seems to be broken")
            write_weight(self, merged)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        backend = self.quantization_backend
        if backend is not None and adapter_names:
            if not backend.supports_merge:
                raise TypeError(
                    f"Cannot merge KAdaptation into a {backend.backend_name} layer: that format cannot be dequantised. "
                    "Use the adapter unmerged (its output is exact), or load the base model unquantised to merge."
                )
            warnings.warn(
                f"Merging KAdaptation into a {backend.backend_name} weight rounds W + ΔW to that format: outputs "
                "differ slightly from the unmerged model's.",
                stacklevel=2,
            )
        for name in adapter_names:
            if name in self.kadapt_u:
                self._add_to_base_weight(name, +1, safe=safe_merge)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.kadapt_u:
                self._add_to_base_weight(name, -1)

    def _use_factored(self, adapter_name: str, tokens: int) -> bool:
        mode = self.forward_mode[adapter_name]
        if mode != "auto":
            return mode == "factored"
        n, r = self.n[adapter_name], self.r[adapter_name]
        right = self.slow_factors(adapter_name)[1]
        slow_rank = None if right is None else right.shape[-1]
        return prefer_factored(n, r, self.in_features, self.out_features, tokens, torch.is_grad_enabled(), slow_rank)

    def _tokens(self, x: torch.Tensor) -> int:
        """Rows the adapter branch sees: every position of every sample."""
        return x.numel() // self.in_features

    def _can_fold(self) -> bool:
        # folding ΔW into the base matmul bypasses base_layer.forward: only for a plain nn.Linear without hooks
        base = self.get_base_layer()
        return (
            type(base) is nn.Linear
            and self.quantization_backend is None  # torchao keeps nn.Linear with a quantised tensor as its weight
            and not hasattr(base, "_hf_hook")
            and base is self.base_layer
        )

    def kadapt_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus every active adapter's branch, each computed one of three ways:

        - factored: the Kronecker identity, x → Σ_i A_i X v_i u_iᵀ, never building ΔW (`_use_factored`: the cost model,
          or `forward_mode`);
        - folded: ΔW added to the base weight and one matmul done (plain `nn.Linear` base, no dropout on the branch);
        - materialised: ΔW built and applied as a separate matmul (dropout active, or a base that cannot be folded).

        `adapter_names` (one name per sample, "__base__" for none; injected by `model(..., adapter_names=[...])`) gives
        each sample its own adapter: every branch then runs on its sub-batch, never folded.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.kadapt_u]
        if not active:
            return self.base_layer(x, *args, **kwargs)

        tokens = self._tokens(x)
        folded, branches = [], []
        for name in active:
            dropout = self.kadapt_dropout[name]
            dropout_active = self.training and isinstance(dropout, nn.Dropout)
            if self._use_factored(name, tokens):
                branches.append((name, "factored"))
            elif dropout_active or not self._can_fold():
                branches.append((name, "materialized"))
            else:
                folded.append(name)

        if folded:
            base = self.get_base_layer()
            weight = base.weight + sum(self.get_delta_weight(name) for name in folded)
            result = F.linear(self._cast_input_dtype(x, weight.dtype), weight, base.bias)
        else:
            result = self.base_layer(x, *args, **kwargs)
        for name, how in branches:
            result = result + self._branch(name, x, how == "factored").to(result.dtype)
        return result

    def _branch(self, name: str, x: torch.Tensor, factored: bool) -> torch.Tensor:
        """One adapter's contribution x ΔWᵀ (after its dropout), factored or through the materialised ΔW."""
        u = self.kadapt_u[name]
        x_in = self.kadapt_dropout[name](self._cast_input_dtype(x, u.dtype))
        if factored:
            (A, A_right), v = self.slow_factors(name), self.kadapt_v[name]
            return kron_forward(x_in, A, u, v, self.scaling[name], A_right)
        delta = self.get_delta_weight(name)
        return F.linear(x_in.to(delta.dtype), delta.T if self.fan_in_fan_out else delta)

    def _mixed_batch_forward(self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any):
        if len(x) != len(adapter_names):
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(adapter_names)} and {len(x)} respectively."
            )
        if self.merged:
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
            )
        result = self.base_layer(x, *args, **kwargs)
        for name in dict.fromkeys(adapter_names):  # each adapter once, on the samples that asked for it
            if name == "__base__" or name not in self.kadapt_u:
                continue
            rows = [i for i, n in enumerate(adapter_names) if n == name]
            sub = x[rows]
            factored = self._use_factored(name, self._tokens(sub))
            result[rows] += self._branch(name, sub, factored).to(result.dtype)
        return result


class _KAdaptationModule(nn.Module, KAdaptationLayer):
    """What every KAdaptation module shares: construction from PEFT's injection, forward, repr."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        slow_owner: dict[str, nn.ModuleDict],
        slow_key: str,
        config: KAdaptationConfig,
        module_name: str = "",
        **kwargs,
    ) -> None:
        super().__init__()
        KAdaptationLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, slow_owner, slow_key, config, module_name=module_name)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.kadapt_forward(x, *args, **kwargs)

    def __repr__(self) -> str:
        return "kadaptation." + super().__repr__()


class Linear(_KAdaptationModule):
    """KAdaptation on a `torch.nn.Linear`, transformers' `Conv1D`, or a quantised linear layer."""


class Conv2d(_KAdaptationModule):
    """KAdaptation on a `torch.nn.Conv2d` (groups=1): ΔW is built on the kernel seen as an (out, in·kh·kw) matrix.

    The input is padded as the base layer pads it (its `padding`, also "same" or "valid", in its `padding_mode`:
    zeros, reflect, replicate or circular), then: materialised, ΔW as a kernel in an unpadded convolution with the
    layer's stride and dilation; factored, the padded input unfolded into (positions × in·kh·kw) patches, the Kronecker
    identity applied to them, folded back to (out, H', W'). So merged and unmerged outputs agree in every mode.
    """

    def _padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom), as `F.pad` takes it; "same" puts the odd pixel right and bottom, as torch does."""
        base = self.get_base_layer()
        if base.padding == "valid":
            return (0, 0, 0, 0)
        if base.padding == "same":
            total = [d * (k - 1) for d, k in zip(base.dilation, base.kernel_size)]  # (height, width)
            return (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
        height, width = base.padding
        return (width, width, height, height)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        pads = self._padding()
        if not any(pads):
            return x
        mode = self.get_base_layer().padding_mode
        return F.pad(x, pads, mode="constant" if mode == "zeros" else mode)

    def _output_size(self, x: torch.Tensor) -> tuple[int, int]:
        """Height and width of the convolution's output for the (unpadded) input `x`."""
        base = self.get_base_layer()
        left, right, top, bottom = self._padding()
        padded = (x.shape[-2] + top + bottom, x.shape[-1] + left + right)
        return tuple(
            (padded[i] - base.dilation[i] * (base.kernel_size[i] - 1) - 1) // base.stride[i] + 1 for i in range(2)
        )

    def _tokens(self, x: torch.Tensor) -> int:
        height, width = self._output_size(x)
        return x.shape[0] * height * width

    def _branch(self, name: str, x: torch.Tensor, factored: bool) -> torch.Tensor:
        base = self.get_base_layer()
        if not factored:
            delta = self.get_delta_weight(name)
            x_in = self._padded(self.kadapt_dropout[name](self._cast_input_dtype(x, delta.dtype)))
            return F.conv2d(x_in, delta, None, base.stride, 0, base.dilation)
        u = self.kadapt_u[name]
        x_in = self._padded(self.kadapt_dropout[name](self._cast_input_dtype(x, u.dtype)))
        patches = F.unfold(x_in, base.kernel_size, base.dilation, 0, base.stride)  # (B, in·kh·kw, L)
        (A, A_right), v = self.slow_factors(name), self.kadapt_v[name]
        out = kron_forward(patches.transpose(1, 2), A, u, v, self.scaling[name], A_right)  # (B, L, out)
        return out.transpose(1, 2).reshape(x.shape[0], self.out_features, *self._output_size(x))


# which KAdaptation module adapts which kind of layer (quantised linear layers, not nn.Linear subclasses, are `Linear`)
LAYER_CLASSES: dict[type[nn.Module], type[_KAdaptationModule]] = {nn.Conv2d: Conv2d, nn.Linear: Linear, Conv1D: Linear}


def layer_class(base: nn.Module) -> type[_KAdaptationModule]:
    return next((cls for kind, cls in LAYER_CLASSES.items() if isinstance(base, kind)), Linear)
