"""KAdaptation on quantised bases, on the CPU: bitsandbytes 8-bit and 4-bit (nf4, fp4), torchao int8 weight-only, HQQ
4-bit. Run by `make test-integrations` (the `quantization` extra, in its own venv).

The adapter branch runs beside the quantised layer's own forward (never W + ΔW on a quantised W); a merge dequantises,
adds ΔW in float and quantises again through PEFT's quantisation backend, so the merged weight is W + ΔW up to one
rounding of the format.
"""

import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, ViTForImageClassification

from peft_kadapt import KAdaptationConfig, KAdaptationLayer
from peft_kadapt.base_weight import read_weight

from conftest import make_vit, vit_inputs


pytestmark = pytest.mark.integrations
BNB = {
    # bitsandbytes' CPU 4-bit kernels need widths that are multiples of 32: a width-128 ViT, the 3-class head in float
    "8bit": dict(load_in_8bit=True, llm_int8_skip_modules=["classifier"]),
    "nf4": dict(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["classifier"],
    ),
    "fp4": dict(
        load_in_4bit=True,
        bnb_4bit_quant_type="fp4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["classifier"],
    ),
}
QUANTIZATIONS = [*BNB, "torchao_int8", "hqq_4bit"]


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("wide_vit")
    make_vit(hidden_size=128, intermediate_size=256).save_pretrained(path)
    return str(path)


def quantized(path: str, kind: str):
    if kind in BNB:
        config = BitsAndBytesConfig(**BNB[kind])
    elif kind == "torchao_int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        config = TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=["classifier"])
    else:  # transformers 5.24 cannot load with HqqConfig ("not available yet"): quantise q and v with HQQ directly
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        model = ViTForImageClassification.from_pretrained(path)
        for block in model.vit.layers:
            for name in ("q_proj", "v_proj"):
                linear = getattr(block.attention, name)
                quant = BaseQuantizeConfig(nbits=4, group_size=64)
                setattr(block.attention, name, HQQLinear(linear, quant, compute_dtype=torch.float32, device="cpu"))
        return model.eval()
    return ViTForImageClassification.from_pretrained(path, quantization_config=config, device_map="cpu")


def first_layer(model) -> KAdaptationLayer:
    return next(m for m in model.modules() if isinstance(m, KAdaptationLayer))


@pytest.mark.parametrize("kind", QUANTIZATIONS)
def test_branch_beside_the_quantized_forward_and_merge_in_float(kind, saved_base):
    torch.manual_seed(0)
    model = get_peft_model(quantized(saved_base, kind), KAdaptationConfig(n=4, init_weights=False)).eval()
    layer = first_layer(model)
    base = layer.get_base_layer()
    x = torch.randn(5, layer.in_features)
    delta = layer.get_delta_weight("default")
    assert delta.dtype == torch.float32 and delta.shape == (layer.out_features, layer.in_features)
    assert layer.quantization_backend is not None
    with torch.no_grad():  # the adapted layer is the quantised layer's own output plus x ΔWᵀ
        torch.testing.assert_close(layer(x), base(x) + x @ delta.T, atol=1e-4, rtol=1e-4)
    before = read_weight(layer, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.merge()
    assert any("rounds W + ΔW to that format" in str(w.message) for w in caught)
    base = layer.get_base_layer()  # HQQ replaces the whole base layer on a merge
    merged = read_weight(layer, torch.float32)
    # one rounding of the format away from W + ΔW, not ΔW lost (as casting ΔW to int8 would do)
    assert (merged - (before + delta)).norm() < 0.5 * delta.norm()
    layer.unmerge()
    assert (read_weight(layer, torch.float32) - before).norm() < 0.5 * delta.norm()
    with torch.no_grad():  # and the layer still runs through the re-quantised base
        torch.testing.assert_close(layer(x), layer.get_base_layer()(x) + x @ delta.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", QUANTIZATIONS)
def test_merge_and_unload_keeps_the_adapter(kind, saved_base):
    torch.manual_seed(0)
    model = get_peft_model(quantized(saved_base, kind), KAdaptationConfig(n=4, init_weights=False)).eval()
    inputs = vit_inputs()
    with torch.no_grad():
        adapted = model(**inputs).logits
        bare = quantized(saved_base, kind)(**inputs).logits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = model.merge_and_unload()(**inputs).logits
    assert (merged - adapted).abs().max() < 0.5 * (bare - adapted).abs().max()


@pytest.mark.parametrize("kind", ["8bit", "nf4"])
def test_train_with_kbit_preparation_and_checkpointing_then_save_and_load(kind, saved_base, tmp_path):
    base = prepare_model_for_kbit_training(quantized(saved_base, kind), use_gradient_checkpointing=True)
    torch.manual_seed(0)
    model = get_peft_model(base, KAdaptationConfig(n=4, modules_to_save=["classifier"]))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs, labels = vit_inputs(8), torch.arange(8) % 3
    model.train()
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert first_layer(model).get_delta_weight("default").abs().sum() > 0
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(quantized(saved_base, kind), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
