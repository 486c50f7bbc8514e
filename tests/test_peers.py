"""The tiny-adapter peers of KAdaptation in peft 0.21, as rows of the method table: each one is built from a variant,
trains a step on a tiny ViT with transformers 5 names, and reports its adapter parameters by the study's rule."""

from dataclasses import replace

import pytest
import torch
from tiny_peers import TINY

from peft_kadapt.training import HEAD, METHODS, Recipe, build_model, fit, parse_variant, with_alpha
from peft_kadapt.training.bench.protocol import default_grid
from peft_kadapt.training.methods import PEERS


def test_every_peer_is_a_row_of_the_method_table():
    assert set(TINY) == set(PEERS) and set(PEERS) <= set(METHODS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_peer_builds_and_trains_a_step(name, tiny_backbone):
    spec = parse_variant(TINY[name] + " targets=q_proj+v_proj", model_name_or_path=tiny_backbone)
    torch.manual_seed(0)
    model, is_peft = build_model(spec, ["a", "b", "c"])
    assert is_peft and model.peft_config["default"].peft_type.value == METHODS[name].peft_type
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and f"{HEAD}." not in n}
    assert adapter, "no trainable adapter parameter"
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 3
    losses = []
    fit(model, x, y, Recipe(METHODS[name].learning_rate, 2, batch_size=8), on_step=lambda s, loss: losses.append(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    moved = [n for n, p in model.named_parameters() if n in adapter and not torch.equal(p.detach(), adapter[n])]
    assert moved, "the adapter did not train"


def test_a_key_the_peer_does_not_have_is_named():
    with pytest.raises(ValueError, match=r"'rank=4' is not KEY=VALUE with KEY a field of LoHaConfig"):
        parse_variant("loha rank=4")


def test_a_peer_that_does_not_fit_the_model_names_the_flag_that_sizes_it(tiny_backbone):
    # C3A's default 256-wide blocks cannot divide the tiny ViT's 32 features
    spec = parse_variant("c3a targets=q_proj+v_proj", model_name_or_path=tiny_backbone)
    with pytest.raises(
        ValueError, match=r"c3a does not fit .* block size .* fields of C3AConfig: `--peft_options KEY=VALUE,...`"
    ):
        build_model(spec, ["a", "b"])


def test_peer_options_are_typed_like_the_config_field(tiny_backbone):
    spec = parse_variant("vera targets=q_proj+v_proj", model_name_or_path=tiny_backbone)
    with pytest.raises(ValueError, match=r"--peft_options 'r=bad': r='bad' is not int \(VeraConfig.r\)"):
        build_model(replace(spec, peft_options="r=bad"), ["a", "b"])
    model, _ = build_model(replace(spec, peft_options="r=8,vera_dropout=0"), ["a", "b"])  # an int where a float goes
    assert model.peft_config["default"].vera_dropout == 0.0


def test_a_peer_searches_its_own_scales_unless_the_variant_writes_one():
    lrs = METHODS["fourierft"].lr_grid
    grid = default_grid("fourierft n_frequency=64", alphas=(1.0, 4.0))  # --alphas is LoRA's and KAdaptation's
    assert [(c.learning_rate, c.alpha) for c in grid] == [(lr, a) for a in (75.0, 150.0) for lr in lrs]
    assert {c.alpha for c in default_grid("fourierft n_frequency=64 scaling=300")} == {None}
    assert {c.alpha for c in default_grid("vera r=8", alphas=(1.0, 4.0))} == {None}  # VeRA has no scale to search


@pytest.mark.parametrize(("variant", "field", "value"), [("fourierft n_frequency=64 scaling=300", "scaling", 150.0),
                                                         ("loha r=2 alpha=4", "alpha", 16), ("lily r=4", "scaling", 0.1),
                                                         ("loha r=2", "alpha", 0.25)])  # fmt: skip
def test_with_alpha_sets_the_peer_config_scale(variant, field, value, tiny_backbone):
    spec = with_alpha(parse_variant(f"{variant} targets=q_proj+v_proj", model_name_or_path=tiny_backbone), value)
    model, _ = build_model(spec, ["a", "b"])
    assert getattr(model.peft_config["default"], field) == value
    with pytest.raises(ValueError, match="Method 'vera' has no adapter scale to set to 4"):
        with_alpha(parse_variant("vera r=8"), 4.0)


def test_a_scale_below_one_reaches_the_peer_layers_and_only_the_scale_takes_a_fraction(tiny_backbone):
    # LoHaConfig.alpha is hinted int, but LoHa divides it by r: the bench's edge extension searches alpha 0.25
    spec = with_alpha(parse_variant("loha r=2 targets=q_proj+v_proj", model_name_or_path=tiny_backbone), 0.25)
    model, _ = build_model(spec, ["a", "b"])
    scalings = [m.scaling["default"] for m in model.modules() if hasattr(m, "hada_w1_a")]
    assert scalings and all(s == pytest.approx(0.125) for s in scalings)
    with pytest.raises(ValueError, match=r"'r=2.5,alpha=0.25': r=2.5 is not int \(LoHaConfig.r\)"):
        parse_variant("loha r=2.5 alpha=0.25")
