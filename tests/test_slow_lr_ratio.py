"""`slow_lr_ratio`: the slow weights A learn that many times faster under Adam, by reparametrisation A = ratio · Â."""

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_kadapt import KAdaptationConfig

from conftest import make_vit, vit_inputs


def effective_A(model, ratio, target="q_proj"):
    return ratio * model.base_model.kadapt_A["default"][target].detach().clone()


@pytest.mark.parametrize("slow_rank", [None, 2])
def test_same_function_and_exact_merge(slow_rank, tmp_path):
    config = KAdaptationConfig(n=4, init_weights=False, slow_lr_ratio=10.0, slow_rank=slow_rank)
    model = get_peft_model(make_vit(), config).eval()
    layer = model.base_model.model.vit.layers[0].attention.q_proj
    a, c = layer.slow_factors("default")
    A = 10.0 * (a if c is None else a @ c.transpose(1, 2))  # the effective slow matrices
    u, v = layer.kadapt_u["default"], layer.kadapt_v["default"]
    expected = layer.scaling["default"] / 10.0 * sum(torch.kron(A[i], u[:, i] @ v[:, i].T) for i in range(4))
    torch.testing.assert_close(layer.get_delta_weight("default"), expected)
    if slow_rank is None:  # A keeps its initial distribution, N(0, 1/n)
        assert 0.8 < A.std().item() * 2 < 1.25
    out = model(**vit_inputs()).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_vit(), tmp_path).eval()
    torch.testing.assert_close(loaded(**vit_inputs()).logits, out)
    torch.testing.assert_close(loaded.merge_and_unload()(**vit_inputs()).logits, out, rtol=1e-4, atol=1e-5)


def test_one_adam_step_moves_A_ratio_times_as_far():
    moves = {}
    for ratio in (1.0, 10.0):
        torch.manual_seed(0)
        model = get_peft_model(make_vit(), KAdaptationConfig(n=4, init_weights=False, slow_lr_ratio=ratio))
        before = effective_A(model, ratio)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model(**vit_inputs()).logits.square().mean().backward()
        optimizer.step()
        moves[ratio] = (effective_A(model, ratio) - before).abs().mean().item()
    assert moves[1.0] == pytest.approx(1e-3, rel=0.05)  # Adam's first step: about lr per entry
    assert moves[10.0] == pytest.approx(1e-2, rel=0.05)


def test_slow_lr_ratio_must_be_positive():
    with pytest.raises(
        ValueError, match="`slow_lr_ratio` should be a finite positive number but the value passed is 0"
    ):
        KAdaptationConfig(slow_lr_ratio=0)
