"""Generic behaviours, run over a table of (name, model, config) rows as in PEFT's test_custom_models.py."""

import copy
import pickle
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from peft_kadapt import KAdaptationConfig, KAdaptationLayer

from conftest import make_mlp, make_vit, mlp_inputs, outputs, vit_inputs
from test_functional import reference_delta


CASES = [
    ("mlp", make_mlp, mlp_inputs, dict(target_modules=["lin0", "lin1"], n=4)),
    (
        "mlp-r3-global",
        make_mlp,
        mlp_inputs,
        dict(target_modules=["lin0", "lin1"], n=2, r=3, share_slow_weights="global"),
    ),
    ("mlp-none", make_mlp, mlp_inputs, dict(target_modules=["lin0", "lin1"], n=4, share_slow_weights="none")),
    ("mlp-dropout", make_mlp, mlp_inputs, dict(target_modules=["lin1"], n=4, kadapt_dropout=0.2)),
    ("vit", make_vit, vit_inputs, dict(n=4, modules_to_save=["classifier"])),
    ("vit-factored", make_vit, vit_inputs, dict(n=8, r=2, forward_mode="factored", modules_to_save=["classifier"])),
    ("vit-materialized", make_vit, vit_inputs, dict(n=2, forward_mode="materialized")),
    ("vit-layer1", make_vit, vit_inputs, dict(n=4, layers_to_transform=[1], layers_pattern="layers")),
    ("vit-slow-rank", make_vit, vit_inputs, dict(n=4, slow_rank=1, modules_to_save=["classifier"])),
    (
        "mlp-slow-rank-global",
        make_mlp,
        mlp_inputs,
        dict(target_modules=["lin0", "lin1"], n=4, slow_rank=2, share_slow_weights="global", forward_mode="factored"),
    ),
]
IDS = [c[0] for c in CASES]


def build(case, **overrides):
    _, make, inputs, kwargs = case
    config = KAdaptationConfig(**{**kwargs, **overrides})
    return get_peft_model(make(), config).eval(), inputs()


def groups(config_kwargs):
    return config_kwargs.get("share_slow_weights", "per_target")


def kadapt_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, KAdaptationLayer)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layer_output_equals_base_plus_reference_delta(case):
    model, _ = build(case, init_weights=False)
    model.eval()
    for name, layer in kadapt_layers(model):
        A, u, v = layer.slow_weights("default"), layer.kadapt_u["default"], layer.kadapt_v["default"]
        expected_delta = reference_delta(A, u, v, layer.scaling["default"])
        torch.testing.assert_close(layer.get_delta_weight("default"), expected_delta)
        x = torch.randn(6, layer.in_features)
        base = layer.get_base_layer()
        expected = base(x) + x @ expected_delta.T
        for mode in ("factored", "materialized", "auto"):
            layer.forward_mode["default"] = mode
            for grad in (True, False):
                with torch.set_grad_enabled(grad):
                    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5, msg=f"{name} {mode}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_default_init_is_identity_and_every_factor_trains(case):
    model, inputs = build(case)
    base = case[1]()
    torch.testing.assert_close(outputs(model, inputs), outputs(base, inputs))
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(2):
        optimizer.zero_grad()
        outputs(model, inputs).square().sum().backward()
        if step == 1:  # after one step v != 0, so u and A receive gradient too
            for name, layer in kadapt_layers(model):
                slow = [t for t in layer.slow_factors("default") if t is not None]
                for tensor in (layer.kadapt_u["default"], layer.kadapt_v["default"], *slow):
                    assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name
        optimizer.step()
    for _, layer in kadapt_layers(model):
        assert layer.get_delta_weight("default").abs().sum() > 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_only_adapter_and_modules_to_save_change_in_training(case):
    model, inputs = build(case)
    before = {k: v.clone() for k, v in model.named_parameters()}
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # moves every parameter with a non-zero gradient
    for _ in range(2):  # two steps: u and A get gradient once v has moved
        optimizer.zero_grad()
        outputs(model, inputs).square().sum().backward()
        optimizer.step()
    for name, param in model.named_parameters():
        trainable = "kadapt_" in name or "modules_to_save" in name
        assert param.requires_grad == trainable, name
        assert (not torch.equal(before[name], param)) == trainable, name


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_slow_weights_are_one_shared_tensor(case):
    model, _ = build(case)
    layers = kadapt_layers(model)
    container = model.base_model.kadapt_A["default"]
    mode = groups(case[3])
    expected_groups = {"global": 1, "none": len(layers)}.get(mode, len({n.rsplit(".", 1)[1] for n, _ in layers}))
    assert len(container) == expected_groups
    rho = case[3].get("slow_rank")
    for _, layer in layers:
        left, right = layer.slow_factors("default")
        assert left is container[layer.slow_key["default"]]
        if rho is not None:
            assert right is model.base_model.kadapt_A_right["default"][layer.slow_key["default"]]
    ptrs = {layer.slow_factors("default")[0].data_ptr() for _, layer in layers}
    assert len(ptrs) == expected_groups
    # counted once by print_trainable_parameters
    trainable, _ = model.get_nb_trainable_parameters()
    n, r = case[3]["n"], case[3].get("r", 1)
    fast = sum(r * (lay.in_features + lay.out_features) for _, lay in layers)
    head = sum(p.numel() for k, p in model.named_parameters() if "modules_to_save" in k)
    slow = n**3 if rho is None else 2 * n * n * rho
    assert trainable == fast + expected_groups * slow + head


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_and_load_round_trip(case, tmp_path):
    model, inputs = build(case, init_weights=False)
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    slow_keys = [k for k in saved if ".kadapt_A." in k or ".kadapt_A_right." in k]
    per_group = 1 if case[3].get("slow_rank") is None else 2  # A, or its two factors
    assert len(slow_keys) == per_group * len(model.base_model.kadapt_A["default"])  # once per group, no aliases
    assert all(k.startswith("base_model.kadapt_A") for k in slow_keys)
    assert (tmp_path / "README.md").exists()
    for low_cpu_mem_usage in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # "Found missing adapter keys" is a UserWarning
            loaded = PeftModel.from_pretrained(case[1](), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
        torch.testing.assert_close(outputs(loaded, inputs), expected)
        layers = kadapt_layers(loaded)
        container = loaded.base_model.kadapt_A["default"]
        for _, layer in layers:
            assert layer.slow_factors("default")[0].data_ptr() == container[layer.slow_key["default"]].data_ptr()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_unmerge_and_unload(case):
    model, inputs = build(case, init_weights=False)
    base_out = outputs(case[1](), inputs)
    expected = outputs(model, inputs)
    assert not torch.allclose(expected, base_out)
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-5)
    with pytest.warns(UserWarning, match="All adapters are already merged"):
        model.merge_adapter()  # idempotent: merges nothing twice
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), base_out, atol=1e-6, rtol=1e-6)
    merged = copy.deepcopy(model).merge_and_unload(safe_merge=True)
    assert not any(isinstance(m, KAdaptationLayer) for m in merged.modules())
    assert not any("kadapt_" in k for k in merged.state_dict())
    torch.testing.assert_close(outputs(merged, inputs), expected, atol=1e-5, rtol=1e-5)
    unloaded = copy.deepcopy(model).unload()
    assert not any(isinstance(m, KAdaptationLayer) for m in unloaded.modules())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_safe_merge_raises_on_broken_adapter(case):
    model, _ = build(case, init_weights=False)
    with torch.no_grad():
        next(iter(model.base_model.kadapt_A["default"].values()))[0, 0, 0] = float("nan")
    with pytest.raises(
        ValueError, match="NaNs detected in the merged weights. The adapter default seems to be broken"
    ):
        model.merge_adapter(safe_merge=True)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_multiple_adapters_set_and_delete(case):
    model, inputs = build(case, init_weights=False)
    out_default = outputs(model, inputs)
    torch.manual_seed(5)
    model.add_adapter("other", KAdaptationConfig(**{**case[3], "init_weights": False}))
    assert outputs(model, inputs).equal(out_default)  # adding does not activate
    model.set_adapter("other")
    out_other = outputs(model, inputs)
    assert not torch.allclose(out_other, out_default)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad and "kadapt_" in k}
    assert trainable and all(".other" in k for k in trainable)
    assert set(model.base_model.kadapt_A) == {"default", "other"}
    model.set_adapter("default")
    torch.testing.assert_close(outputs(model, inputs), out_default)
    model.delete_adapter("other")
    assert set(model.base_model.kadapt_A) == {"default"}
    assert not any(".other" in k for k in model.state_dict())
    torch.testing.assert_close(outputs(model, inputs), out_default)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_slow_weights_have_one_owner_above_the_layers(case):
    """Each A-set is registered once, by the tuner: no adapted layer (hence no FSDP unit around a block) holds it."""
    model, _ = build(case)
    slow = {
        id(p)
        for c in ("kadapt_A", "kadapt_A_right")
        for g in getattr(model.base_model, c, {}).values()
        for p in g.values()
    }
    assert slow
    owners = [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in slow]
    assert len(owners) == len(slow) and all(n.startswith("base_model.kadapt_A") for n in owners), owners
    for _, layer in kadapt_layers(model):
        assert not {id(p) for p in layer.parameters()} & slow
        assert not any("kadapt_A" in k for k in layer.state_dict())


@pytest.mark.parametrize("trainable", [True, False])
def test_loaded_slow_weights_train_only_when_asked(trainable, tmp_path):
    model, _ = build(CASES[4], init_weights=False)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_vit(), tmp_path, is_trainable=trainable)
    assert {p.requires_grad for g in loaded.base_model.kadapt_A.values() for p in g.values()} == {trainable}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_deepcopy_pickle_and_dtype_casts_keep_sharing(case):
    model, inputs = build(case, init_weights=False)
    expected = outputs(model, inputs)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(outputs(clone, inputs), expected)
        container = clone.base_model.kadapt_A["default"]
        for _, layer in kadapt_layers(clone):
            assert layer.slow_factors("default")[0] is container[layer.slow_key["default"]]
        with torch.no_grad():
            for p in container.values():
                p.add_(1.0)  # a change through the container reaches every layer of the clone, not the original
        assert not torch.allclose(outputs(clone, inputs), expected)
        torch.testing.assert_close(outputs(model, inputs), expected)
    for dtype, tol in ((torch.bfloat16, 0.1), (torch.float16, 0.05), (torch.float64, 1e-5)):
        cast = copy.deepcopy(model).to(dtype)
        got = outputs(cast, {k: v.to(dtype) for k, v in inputs.items()})
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)
        container = cast.base_model.kadapt_A["default"]
        for _, layer in kadapt_layers(cast):
            assert layer.slow_factors("default")[0] is container[layer.slow_key["default"]]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_convert_to_lora_reproduces_outputs(case):
    from peft import convert_to_lora, set_peft_model_state_dict

    model, inputs = build(case, init_weights=False)
    n, r, rho = case[3]["n"], case[3].get("r", 1), case[3].get("slow_rank")
    bound = n * n * r if rho is None else n * rho * r  # rank(ΔW) <= n²·r, or n·ρ·r with factorised slow weights
    smallest = min(min(lay.in_features, lay.out_features) for _, lay in kadapt_layers(model))
    # a LoRA of that rank is exact; where the bound exceeds a layer's size, keep every singular value instead
    rank = bound if bound <= smallest else 1.0
    assert model.supports_lora_conversion()
    lora_config, lora_state = convert_to_lora(model, rank=rank)
    lora_model = get_peft_model(case[1](), lora_config)
    set_peft_model_state_dict(lora_model, lora_state)
    if "modules_to_save" in case[3]:
        lora_model.load_state_dict(
            {k: v for k, v in model.state_dict().items() if "modules_to_save" in k}, strict=False
        )
    torch.testing.assert_close(outputs(lora_model, inputs), outputs(model, inputs), atol=1e-4, rtol=1e-4)


def test_dropout_only_acts_in_training():
    model, inputs = build(CASES[3], init_weights=False)
    model.eval()
    assert outputs(model, inputs).equal(outputs(model, inputs))
    model.train()
    torch.manual_seed(0)
    a = outputs(model, inputs)
    torch.manual_seed(1)
    assert not torch.allclose(a, outputs(model, inputs))


def test_unsupported_in_features_reported_by_layer_attributes(mlp):
    model = get_peft_model(mlp, KAdaptationConfig(target_modules=["lin0"], n=4))
    layer = model.base_model.model.lin0
    assert (layer.in_features, layer.out_features) == (12, 16)
    assert repr(layer).startswith("kadaptation.Linear")
    assert isinstance(layer.get_base_layer(), nn.Linear)


def test_layer_status_lists_only_the_adapters_that_touch_each_layer():
    model = get_peft_model(make_vit(), KAdaptationConfig(n=4, target_modules=["q_proj"]))
    model.add_adapter("other", KAdaptationConfig(n=4, target_modules=["v_proj"]))
    status = {s.name.rsplit(".", 1)[-1]: s for s in model.get_layer_status()}
    assert status["q_proj"].available_adapters == ["default"]
    assert status["v_proj"].available_adapters == ["other"]
    assert set(status["q_proj"].requires_grad) == {"default"}
    # the A-sets are still one tensor per group, shared by the layers of that group
    q0, q1 = (model.base_model.model.vit.layers[i].attention.q_proj for i in (0, 1))
    shared = model.base_model.kadapt_A["default"]["q_proj"]
    assert q0.slow_factors("default")[0] is q1.slow_factors("default")[0] is shared
