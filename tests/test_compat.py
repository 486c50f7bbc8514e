"""Adapters and state dicts saved by earlier versions load with identical outputs (fixtures in tests/fixtures/)."""

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import ViTForImageClassification

from peft_kadapt import KAdaptationConfig


V0_1_0 = Path(__file__).parent / "fixtures" / "v0_1_0"
ADAPTERS = ("per_target", "global_slow_rank", "none_r2")


def base_model():
    return ViTForImageClassification.from_pretrained(V0_1_0 / "base").eval()


@pytest.mark.parametrize("name", ADAPTERS)
def test_v0_1_0_adapter_loads_with_identical_outputs(name):
    expected = load_file(V0_1_0 / "expected_logits.safetensors")
    model = PeftModel.from_pretrained(base_model(), V0_1_0 / name).eval()
    with torch.no_grad():
        logits = model(pixel_values=expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected[name], rtol=0, atol=1e-6)
    merged = model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(pixel_values=expected["pixel_values"]).logits, expected[name], atol=1e-5, rtol=0
        )


def test_v0_1_0_full_state_dict_loads_with_identical_outputs():
    expected = load_file(V0_1_0 / "expected_logits.safetensors")
    config = KAdaptationConfig.from_pretrained(V0_1_0 / "per_target")
    model = get_peft_model(base_model(), config).eval()
    state = torch.load(V0_1_0 / "per_target_full_state_dict.pt", weights_only=True)
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model(pixel_values=expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["per_target"], rtol=0, atol=1e-6)
