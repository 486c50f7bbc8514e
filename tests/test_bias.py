"""`bias`: "none", "all", "kadapt_only", as LoRA's: which biases train, saved and loaded, merged, counted."""

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_kadapt import KAdaptationConfig
from peft_kadapt.budget import parameter_report

from conftest import make_vit, vit_inputs


def trained(bias: str):
    model = get_peft_model(make_vit(), KAdaptationConfig(n=4, bias=bias, modules_to_save=["classifier"]))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        model(**vit_inputs()).logits.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def trainable_biases(model) -> set[str]:
    return {
        n.split("base_model.model.")[-1] for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")
    }


@pytest.mark.parametrize("bias", ["none", "all", "kadapt_only"])
def test_biases_train_save_load_merge_and_count(bias, tmp_path):
    model = trained(bias)
    biases = {n for n in trainable_biases(model) if "classifier" not in n}
    adapted = {f"vit.layers.{i}.attention.{t}.base_layer.bias" for i in (0, 1) for t in ("q_proj", "v_proj")}
    if bias == "none":
        assert biases == set()
    elif bias == "kadapt_only":
        assert biases == adapted
    else:
        assert adapted < biases and "vit.layers.0.mlp.fc1.bias" in biases
    report = parameter_report(make_vit(), KAdaptationConfig(n=4, bias=bias, modules_to_save=["classifier"]))
    adapter_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)
    assert report.total == adapter_params
    # saved with the adapter, loaded into a fresh base: the same outputs
    model.save_pretrained(tmp_path)
    expected = model(**vit_inputs()).logits
    loaded = PeftModel.from_pretrained(make_vit(), tmp_path).eval()
    torch.testing.assert_close(loaded(**vit_inputs()).logits, expected)
    # merged: the trained biases stay in the base layers
    torch.testing.assert_close(loaded.merge_and_unload()(**vit_inputs()).logits, expected, rtol=1e-4, atol=1e-5)


def test_bias_must_be_one_of_the_options():
    with pytest.raises(ValueError, match=r"`bias` should be one of \('none', 'all', 'kadapt_only'\)"):
        KAdaptationConfig(bias="lora_only")
