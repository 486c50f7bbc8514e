"""transformers' Conv1D (GPT-2's c_attn, c_proj, c_fc: weight stored as (in, out)), with the guarantees of Linear."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from peft_kadapt import KAdaptationConfig
from peft_kadapt.budget import parameter_report


def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16)
    return GPT2LMHeadModel(config).eval()


IDS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("forward_mode", ["auto", "factored", "materialized"])
def test_conv1d_output_is_base_plus_reference_delta(forward_mode):
    model = get_peft_model(tiny_gpt2(), KAdaptationConfig(n=4, init_weights=False, forward_mode=forward_mode)).eval()
    layer = model.base_model.model.transformer.h[0].attn.c_attn  # default target for gpt2
    A, u, v = layer.slow_weights("default"), layer.kadapt_u["default"], layer.kadapt_v["default"]
    reference = layer.scaling["default"] * sum(torch.kron(A[i], u[:, i] @ v[:, i].T) for i in range(4))  # (out, in)
    assert reference.shape == (96, 32) and layer.get_delta_weight("default").shape == (32, 96)  # Conv1D layout
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.get_base_layer()(x) + x @ reference.T, rtol=1e-5, atol=1e-5)


def test_conv1d_merge_save_load_and_count(tmp_path):
    model = get_peft_model(tiny_gpt2(), KAdaptationConfig(n=4, init_weights=False)).eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_gpt2(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=1e-4, atol=1e-4)
    trainable = model.get_nb_trainable_parameters()[0]
    assert parameter_report(tiny_gpt2(), KAdaptationConfig(n=4)).total == trainable == 2 * (32 + 96) + 4**3


def test_conv1d_n_must_divide():
    with pytest.raises(ValueError, match=r"'transformer.h.0.attn.c_attn' has weight shape \(96, 32\) and n=5"):
        get_peft_model(tiny_gpt2(), KAdaptationConfig(n=5))
