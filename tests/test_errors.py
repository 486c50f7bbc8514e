"""Bad input gets an error that says what is wrong and how to fix it."""

import re

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from peft_kadapt import KAdaptationConfig

from conftest import make_mlp, make_vit


@pytest.mark.parametrize("field", ["n", "r"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_n_and_r_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=rf"`{field}` should be a positive integer value but the value passed is"):
        KAdaptationConfig(**{field: value})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kadapt_dropout=1.0), "`kadapt_dropout` should be in [0, 1)"),
        (dict(share_slow_weights="layer"), "`share_slow_weights` should be one of ('per_target', 'global', 'none')"),
        (dict(forward_mode="fast"), "`forward_mode` should be one of ('auto', 'factored', 'materialized')"),
        (dict(alpha="big"), "`alpha` should be a finite, non-zero number"),
        (
            dict(n=8, slow_rank=0),
            "`slow_rank` should be None (full n×n slow matrices) or an integer between 1 and n=8",
        ),
        (dict(n=8, slow_rank=9), "but the value passed is 9"),
        (dict(target_modules=".*q_proj", layers_to_transform=[0]), "`layers_to_transform` cannot be used"),
        (dict(layers_pattern="layers"), "`layers_to_transform` must also be specified"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        KAdaptationConfig(**kwargs)


def test_n_that_does_not_divide_names_module_shape_and_working_values():
    with pytest.raises(ValueError) as info:
        get_peft_model(make_mlp(), KAdaptationConfig(target_modules=["lin0"], n=5))
    message = str(info.value)
    assert "'lin0'" in message and "(16, 12)" in message and "n=5" in message
    assert "[1, 2, 4]" in message and "exclude_modules" in message


def test_unsupported_layer_type_lists_supported_types():
    class WithConvs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3)
            self.depthwise = nn.Conv2d(4, 4, 3, groups=4)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(
        TypeError,
        match=r"cannot adapt module 'conv' of type Conv1d\. Supported types: torch\.nn\.Linear, "
        r"transformers\.pytorch_utils\.Conv1D, torch\.nn\.Conv2d \(groups=1\)",
    ):
        get_peft_model(WithConvs(), KAdaptationConfig(target_modules=["conv"], n=2))
    with pytest.raises(TypeError, match=r"'depthwise': a grouped or depthwise Conv2d \(groups=4\).*exclude_modules"):
        get_peft_model(WithConvs(), KAdaptationConfig(target_modules=["depthwise"], n=2))


def test_unknown_model_type_without_target_modules():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37))
    with pytest.raises(ValueError, match=r"no default `target_modules` for model type 'bert'. Pass `target_modules`"):
        get_peft_model(model, KAdaptationConfig(n=4))


def test_invalid_adapter_name():
    model = get_peft_model(make_mlp(), KAdaptationConfig(target_modules=["lin1"], n=4))
    with pytest.raises(ValueError, match="Adapter names must be non-empty and contain no '.'"):
        model.add_adapter("a.b", KAdaptationConfig(target_modules=["lin1"], n=4))


@pytest.fixture
def saved_vit(tmp_path):
    model = get_peft_model(make_vit(), KAdaptationConfig(n=4, init_weights=False))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_truncated_adapter_file_is_an_error(saved_vit):
    path = saved_vit / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match=r"(?i)incomplete|deserializ|invalid|error"):
        PeftModel.from_pretrained(make_vit(), saved_vit)


def test_adapter_file_missing_tensors_is_an_error_not_a_partial_load(saved_vit):
    path = saved_vit / "adapter_model.safetensors"
    tensors = load_file(path)
    del tensors["base_model.kadapt_A.q_proj"]
    del tensors[next(k for k in tensors if k.endswith("kadapt_u"))]
    save_file(tensors, path)
    with pytest.raises(
        ValueError, match=r"checkpoint for adapter 'default' is incomplete: \d+ of \d+ adapter tensors"
    ):
        PeftModel.from_pretrained(make_vit(), saved_vit)


def test_adapter_loaded_into_model_of_other_shape_is_an_error(saved_vit):
    with pytest.raises(ValueError, match=r"does not fit this model .*checkpoint \(8, 4, 1\) vs model \(16, 4, 1\)"):
        PeftModel.from_pretrained(make_vit(hidden_size=64, intermediate_size=64), saved_vit)


def test_safe_merge_error_message_matches_peft():
    model = get_peft_model(make_mlp(), KAdaptationConfig(target_modules=["lin1"], n=4, init_weights=False))
    with torch.no_grad():
        model.base_model.model.lin1.kadapt_u["default"].fill_(float("inf"))
    with pytest.raises(
        ValueError, match="NaNs detected in the merged weights. The adapter default seems to be broken"
    ):
        model.merge_and_unload(safe_merge=True)


def test_conflicting_adapters_are_refused():
    from peft import LoraConfig

    model = get_peft_model(make_mlp(), KAdaptationConfig(target_modules=["lin1"], n=4))
    with pytest.raises(ValueError, match="Adapter with name 'default' already exists"):
        model.add_adapter("default", KAdaptationConfig(target_modules=["lin1"], n=2))
    with pytest.raises(ValueError, match="(?i)different peft types|cannot combine"):
        model.add_adapter("lora", LoraConfig(target_modules=["lin1"]))
    # adapters of different n and sharing coexist: each owns its slow weights
    model.add_adapter("other", KAdaptationConfig(target_modules=["lin1"], n=2, share_slow_weights="global"))
    assert model.base_model.kadapt_A["other"]["global"].shape == (2, 2, 2)
