"""KAdaptationModel: injection, the shared slow weights, and their save / load hooks."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from functools import partial

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import get_quantization_kwargs
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from ._registration import PREFIX
from .base_weight import device_of, is_partitioned
from .config import (
    TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING,
    KAdaptationConfig,
    default_target_modules,
    sharing_group,
)
from .layer import SLOW, SLOW_RIGHT, KAdaptationLayer, check_n_divides, check_supported, features, layer_class
from .parametrization import slow_init_std


ALLOW_NON_FINITE_ENV = "KADAPT_ALLOW_NONFINITE"  # "1": load adapter files that hold NaN or inf


class KAdaptationModel(BaseTuner):
    """
    Creates a KAdaptation model from a pretrained transformers model. Use it through `peft.get_peft_model` after
    `import peft_kadapt`.

    The slow weights A of each sharing group live once, in `model.base_model.kadapt_A[adapter_name][group]`; every
    adapted layer of the group holds a reference to that container and looks its entry up at forward time, so the
    sharing survives `load_state_dict`, dtype casts, `deepcopy` and pickling.

    Args:
        model ([`~transformers.PreTrainedModel`]): The model to be adapted.
        config ([`KAdaptationConfig`]): The configuration of the KAdaptation adapter.
        adapter_name (`str`): The name of the adapter, defaults to `"default"`.
        low_cpu_mem_usage (`bool`, *optional*, defaults to `False`): Create empty adapter weights on the meta device.

    Example:

        ```py
        >>> import peft_kadapt
        >>> from peft import get_peft_model
        >>> from transformers import ViTConfig, ViTForImageClassification

        >>> base = ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        ...     intermediate_size=128, image_size=32, patch_size=8, num_labels=3))
        >>> config = peft_kadapt.KAdaptationConfig(n=8, r=1, modules_to_save=["classifier"])
        >>> model = get_peft_model(base, config)
        >>> sorted(model.base_model.kadapt_A["default"].keys())
        ['q_proj', 'v_proj']
        ```
    """

    prefix: str = PREFIX
    tuner_layer_cls = KAdaptationLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING
    uses_shared_state: bool = True

    def _slow_container(self, name: str = SLOW) -> nn.ModuleDict:
        # created lazily: `_pre_injection_hook` does not run for `add_adapter` / `load_adapter`
        if name not in self._modules:
            self.add_module(name, nn.ModuleDict({}))
        return self._modules[name]

    def _slow_owner(self) -> dict[str, nn.ModuleDict]:
        """What the layers hold (unregistered): this model's slow-weight containers, one dict shared by every layer."""
        owner = self.__dict__.setdefault("_kadapt_slow_owner", {})
        for name in (SLOW, SLOW_RIGHT):
            if name in self._modules:
                owner[name] = self._modules[name]
        return owner

    def _prepare_adapter_config(self, peft_config: KAdaptationConfig, model_config: dict) -> KAdaptationConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = set(default_target_modules(model_config.get("model_type")))
        blocks = model_config.get("num_hidden_layers")
        layers = peft_config.layers_to_transform
        layers = [layers] if isinstance(layers, int) else layers
        if layers is not None and isinstance(blocks, int) and max(layers) >= blocks:
            raise ValueError(
                f"`layers_to_transform`={peft_config.layers_to_transform!r} names blocks this model does not have: it "
                f"has {blocks} (indices 0 to {blocks - 1})."
            )
        return peft_config

    def _check_new_adapter_config(self, config: KAdaptationConfig) -> None:
        super()._check_new_adapter_config(config)
        for name, other in self.peft_config.items():
            if other is config:
                if not name or "." in name:
                    raise ValueError(f"Adapter names must be non-empty and contain no '.', got {name!r}.")

    def _create_and_replace(
        self, kadapt_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs
    ) -> None:
        if current_key is None:
            raise ValueError("Current Key shouldn't be `None`")
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        check_supported(base, current_key)
        check_n_divides(kadapt_config.n, *features(base), current_key)

        slow_key = sharing_group(kadapt_config.share_slow_weights, target_name, current_key)
        self._create_slow_weights(kadapt_config, adapter_name, slow_key, device_of(base))
        if isinstance(target, KAdaptationLayer):
            target.update_layer(adapter_name, self._slow_owner(), slow_key, kadapt_config, module_name=current_key)
            return
        new_module = layer_class(base)(
            target,
            adapter_name,
            self._slow_owner(),
            slow_key,
            kadapt_config,
            module_name=current_key,
            **get_quantization_kwargs(self),  # torchao needs its quantisation function to re-quantise after merges
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # PEFT's generic version copies `weight` onto a base layer being put back; an HQQ layer has none (it keeps
        # `W_q`), and it is the very object the adapter wrapped, so nothing needs copying
        if not hasattr(new_module, "base_layer") and not hasattr(new_module, "weight"):
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _create_slow_weights(self, config: KAdaptationConfig, adapter_name: str, slow_key: str, device) -> None:
        """The group's A-set, once: (n, n, n), or factors a, c of shape (n, n, ρ) with `slow_rank` ρ."""
        n, rho = config.n, config.slow_rank
        names = (SLOW,) if rho is None else (SLOW, SLOW_RIGHT)
        for name in names:
            container = self._slow_container(name)
            if adapter_name not in container:
                container[adapter_name] = nn.ParameterDict({})
            if slow_key in container[adapter_name]:
                continue
            A = torch.empty(n, n, n if rho is None else rho, device=device)
            if not A.is_meta:
                nn.init.normal_(A, std=slow_init_std(config.parametrization, n, rho, config.slow_lr_ratio))
            # an adapter added beside the active one starts frozen, as its fast weights do
            container[adapter_name][slow_key] = nn.Parameter(A, requires_grad=adapter_name in self.active_adapters)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """`model(..., adapter_names=[...])`: one adapter per sample ("__base__" for the bare model), as with LoRA.
        Injects the names into every KAdaptation layer and every `modules_to_save` wrapper (each adapter's head)."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError(
                f"`adapter_names` should be a list of adapter names, one per input, got {adapter_names!r}."
            )
        known = {name for m in self.modules() if isinstance(m, KAdaptationLayer) for name in m.kadapt_u}
        unknown = {n for n in adapter_names if n != "__base__"} - known
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        hook = partial(_inject_adapter_names, adapter_names=list(adapter_names))
        handles = [
            m.register_forward_pre_hook(hook, with_kwargs=True)
            for m in self.modules()
            if isinstance(m, (KAdaptationLayer, AuxiliaryTrainingWrapper))
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        active = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for name in (SLOW, SLOW_RIGHT):  # the layers set their own factors; the slow weights are the model's
            for adapter, group in self._modules.get(name, {}).items():
                group.requires_grad_(adapter in active and not inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for name in (SLOW, SLOW_RIGHT):
            if name in self._modules and adapter_name in self._modules[name]:
                del self._modules[name][adapter_name]

    # Saving and loading: each A-set is one tensor under its model-level key (`base_model.kadapt_A.<group>` in the
    # adapter file), exactly as peft_kadapt 0.1 saved it, so adapter files of either version load alike.

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_load_state_dict_pre_hook(_drop_layer_aliases_of_slow_weights)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        model_state = model.state_dict(keep_vars=True)
        names = "|".join(re.escape(n) for n in (*KAdaptationLayer.adapter_layer_names, SLOW, SLOW_RIGHT))
        pattern = re.compile(rf"(^|\.)({names})\.{re.escape(adapter_name)}(\.|$)")
        expected = [k for k in model_state if pattern.search(k)]
        missing = [k for k in expected if k not in remapped]
        if missing:
            raise ValueError(
                f"The KAdaptation checkpoint for adapter {adapter_name!r} is incomplete: {len(missing)} of "
                f"{len(expected)} adapter tensors are missing (first: {missing[:3]}). The file is truncated or was "
                "written for another model; nothing was loaded."
            )
        shapes = {k: tuple(getattr(model_state[k], "ds_shape", model_state[k].shape)) for k in expected}  # ZeRO-3
        wrong = [
            f"{k}: checkpoint {tuple(remapped[k].shape)} vs model {shapes[k]}"
            for k in expected
            if tuple(remapped[k].shape) != shapes[k]
        ]
        if wrong:
            raise ValueError(
                f"The KAdaptation checkpoint for adapter {adapter_name!r} does not fit this model ({len(wrong)} "
                f"tensors differ in shape, first: {wrong[:3]}). Load it into the base model it was trained on, with "
                "the same `n` and `r`."
            )
        partitioned = [k for k in expected if is_partitioned(model_state[k])]
        if partitioned:
            raise ValueError(
                f"Cannot load KAdaptation adapter {adapter_name!r}: DeepSpeed ZeRO-3 has already partitioned the "
                f"model's adapter tensors (first: {partitioned[:2]}). Load or create adapters before "
                "`deepspeed.initialize` / `accelerator.prepare` (a base model built under `deepspeed.zero.Init` is fine)."
            )
        broken = [k for k in expected if not torch.isfinite(remapped[k]).all()]
        if broken and os.environ.get(ALLOW_NON_FINITE_ENV) != "1":
            raise ValueError(
                f"The KAdaptation checkpoint for adapter {adapter_name!r} holds NaN or infinite values in "
                f"{len(broken)} tensors (first: {broken[:3]}); nothing was loaded. The training that wrote it diverged: "
                f"retrain with a lower learning rate or alpha. To load it anyway (e.g. to inspect it), set "
                f"{ALLOW_NON_FINITE_ENV}=1."
            )
        return remapped


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _drop_layer_aliases_of_slow_weights(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
):
    """A full `state_dict` saved by peft_kadapt 0.1 also holds every A-set under each adapted layer
    (`<layer>.kadapt_A.<adapter>.<group>`), aliases of the model-level tensor: keep the model-level key (filled from an
    alias if it is absent) and drop the aliases, so such a file loads strictly into today's layout."""
    for name in (SLOW, SLOW_RIGHT):
        own = f"{prefix}{name}."
        for key in [k for k in state_dict if k.startswith(prefix) and f".{name}." in k and not k.startswith(own)]:
            tail = key.rsplit(f".{name}.", 1)[1]  # "<adapter>.<group>"
            state_dict.setdefault(own + tail, state_dict[key])
            del state_dict[key]
