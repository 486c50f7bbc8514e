"""A base layer's weight, whoever holds it: plain, partitioned by DeepSpeed ZeRO-3, or quantised.

Everything that needs the weight's shape reads it from the layer's attributes (`weight_shape`), never from the stored
tensor: ZeRO-3 leaves a `[0]` placeholder there, bitsandbytes 4-bit a packed column. Merging reads the weight as a
dense float matrix and writes the sum back in the layer's own format (`read_weight`, `write_weight`) through PEFT's
quantisation backends (`peft.utils.resolve_quantization_backend`: bitsandbytes 8-bit and 4-bit, HQQ, torchao, and the
forward-only AQLM, AWQ, EETQ, GPTQ, INC): a quantised weight is dequantised, ΔW added in float and the sum quantised
again, never ΔW cast to int8; a backend that cannot dequantise refuses the merge by name.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft.utils.integrations import gather_params_ctx
from torch import nn
from transformers.pytorch_utils import Conv1D


def weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The weight's logical shape: (out, in) for Linear, (in, out) for transformers' Conv1D, the kernel for Conv2d."""
    if isinstance(module, Conv1D):
        return (module.nx, module.nf)
    if isinstance(module, nn.Conv2d):
        return (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    return (module.out_features, module.in_features)


def device_of(module: nn.Module) -> torch.device:
    """Where a base layer lives (an HQQ layer has no `weight`: its first tensor, or its `device`, says)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device(getattr(module, "device", "cpu"))


def is_partitioned(tensor: torch.Tensor) -> bool:
    """Whether DeepSpeed ZeRO-3 manages this parameter (it may be gathered for the forward that is running now)."""
    return hasattr(tensor, "ds_shape")


def _needs_gathering(tensor: torch.Tensor) -> bool:
    status = getattr(tensor, "ds_status", None)  # DeepSpeed's ZeroParamStatus; inside a forward it is AVAILABLE
    return status is not None and status.name == "NOT_AVAILABLE"


@contextmanager
def gathered(params, modifier_rank: int | None = None):
    """Under ZeRO-3, the whole of each parameter inside the block. To read (`modifier_rank=None`), parameters the
    running forward has gathered already are left alone; to write (`modifier_rank` set), every partitioned one is
    taken, so that the rank's result is written back into the partitions (a small parameter that ZeRO-3 keeps whole
    between steps still has a partition behind it). Without DeepSpeed nothing happens."""
    needed = _needs_gathering if modifier_rank is None else is_partitioned
    params = [p for p in params if p is not None and needed(p)]
    if not params:
        yield
        return
    with gather_params_ctx(params, modifier_rank=modifier_rank):
        yield


def read_weight(layer, dtype: torch.dtype) -> torch.Tensor:
    """The base weight of a tuner layer as a dense tensor of `dtype` in its logical shape, dequantised by the layer's
    `quantization_backend` if it has one. Call it inside `gathered([...weight])` when the model may be partitioned."""
    base, backend = layer.get_base_layer(), layer.quantization_backend
    if backend is None:
        return base.weight.data.to(dtype)
    weight = getattr(base, "weight", None)
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        # bitsandbytes repacks a 4-bit weight for AVX512-BF16 CPUs at its first inference; dequantising needs the
        # standard layout back (what bitsandbytes' own state_dict saving does first)
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
    return backend.get_base_weight(base).to(dtype)


def write_weight(layer, value: torch.Tensor) -> None:
    """Store `value` (logical shape, float) as the tuner layer's base weight, in the base layer's own format."""
    if layer.quantization_backend is not None:
        layer.quantization_backend.set_base_weight(layer, value)
        return
    weight = layer.get_base_layer().weight
    weight.data = value.to(weight.dtype)
