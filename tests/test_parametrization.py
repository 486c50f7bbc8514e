"""The parametrisation: how far a step moves a layer, at a given alpha and learning rate, against LoRA's.

The layers are ViT-S-sized (384 and 1536 wide) and driven by the same random loss: with Adam the size of a step
depends on the factors' sizes and the scaling, not on the task, so this pins what docs/kadaptation.md derives and
`benchmarks/update_size.py` measures on the real backbone.
"""

import functools
import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from peft_kadapt import KAdaptationConfig, KAdaptationLayer


SHAPES = {"q_proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}  # (in, out), as in ViT-S


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        for name, (d, k) in SHAPES.items():
            setattr(self, name, nn.Linear(d, k))

    def forward(self, x):  # each layer sees its own input; the loss only needs gradients to reach every layer
        return sum(getattr(self, name)(x[name]).pow(2).mean() for name in SHAPES)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(64, d, generator=g) for name, (d, _) in SHAPES.items()}


def delta_norms(config, steps: int, lr: float = 3e-3) -> dict[str, float]:
    """‖ΔW‖_F of each layer after `steps` Adam steps."""
    torch.manual_seed(0)
    model = get_peft_model(Block(), config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        optimizer.zero_grad()
        model(inputs(step)).backward()
        optimizer.step()
    layers = {n.rsplit(".", 1)[-1]: m for n, m in model.named_modules() if hasattr(m, "get_delta_weight")}
    return {name: layers[name].get_delta_weight("default").norm().item() for name in SHAPES}


def lora(r: int, alpha: float) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=list(SHAPES))


@functools.cache
def lora_norms(r: int, steps: int) -> dict[str, float]:
    return delta_norms(lora(r, 16.0), steps)


SETTINGS = [(n, r, "per_target") for n in (4, 8, 16, 32) for r in (1, 2, 4)]
SETTINGS += [(8, 1, "global"), (8, 1, "none"), (4, 4, "global"), (32, 2, "none")]


@pytest.mark.parametrize("steps", [1, pytest.param(10, marks=pytest.mark.slow)])
def test_step_matches_lora_of_the_same_rank_within_2x(steps):
    for n, r, share in SETTINGS:
        config = KAdaptationConfig(n=n, r=r, alpha=16.0, target_modules=list(SHAPES), share_slow_weights=share)
        mine, theirs = delta_norms(config, steps), lora_norms(r, steps)
        for name in SHAPES:
            ratio = mine[name] / theirs[name]
            assert 0.5 < ratio < 2.0, f"n={n} r={r} {share} {name}: {ratio:.2f} × LoRA r={r}"


def test_legacy_step_grows_with_the_input_width():
    """What the default fixes: under "legacy" the step is ~10× LoRA's at width 384 and twice that at 1536."""
    config = KAdaptationConfig(n=8, alpha=16.0, target_modules=list(SHAPES), parametrization="legacy")
    mine, theirs = delta_norms(config, 1), lora_norms(1, 1)
    ratios = {name: mine[name] / theirs[name] for name in SHAPES}
    assert ratios["q_proj"] > 2.0 and ratios["fc2"] > 1.7 * ratios["q_proj"], ratios


def test_first_step_does_not_depend_on_n_or_r_and_later_ones_not_on_n():
    def size(n, r, steps):
        return delta_norms(KAdaptationConfig(n=n, r=r, alpha=16.0, target_modules=list(SHAPES)), steps)["fc1"]

    first = [size(n, r, 1) for n in (4, 32) for r in (1, 4)]
    assert max(first) / min(first) < 1.3, first
    tenth = [size(n, 1, 10) for n in (4, 8, 32)]
    assert max(tenth) / min(tenth) < 1.3, tenth


def test_default_initial_factors():
    config = KAdaptationConfig(n=8, target_modules=["fc2"])
    model = get_peft_model(Block(), config)
    layer = model.base_model.model.fc2
    assert isinstance(layer, KAdaptationLayer)
    assert torch.count_nonzero(layer.kadapt_u["default"]) == 0  # the output side starts at 0, as LoRA's B
    assert layer.kadapt_v["default"].std().item() == pytest.approx(1 / math.sqrt(3 * 1536), rel=0.05)
    assert model.base_model.kadapt_A["default"]["fc2"].std().item() == pytest.approx(1 / math.sqrt(8), rel=0.1)
    assert layer.scaling["default"] == pytest.approx(16.0 / math.sqrt(2))  # alpha / sqrt(2 r) at r = 1


def test_parametrization_defaults_and_old_files(tmp_path):
    assert KAdaptationConfig().parametrization == "lora_matched"
    assert KAdaptationConfig(parametrization="legacy").alpha == 4.0  # 0.1's default alpha with 0.1's parametrisation
    saved = KAdaptationConfig(n=4, alpha=2.0).to_dict()
    saved["peft_type"] = "KADAPTATION"
    del saved["parametrization"]  # what peft_kadapt 0.1 wrote
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    old = KAdaptationConfig.from_pretrained(tmp_path)
    assert (old.parametrization, old.alpha) == ("legacy", 2.0)
    KAdaptationConfig(n=4).save_pretrained(tmp_path)
    assert KAdaptationConfig.from_pretrained(tmp_path).parametrization == "lora_matched"


def test_unknown_parametrization_is_refused():
    with pytest.raises(ValueError, match=r"`parametrization` should be one of \('lora_matched', 'legacy'\)"):
        KAdaptationConfig(parametrization="muP")
