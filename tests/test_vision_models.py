"""ViT-family specifics: default targets, checkpointing, half precision, Auto classes, Trainer."""

import json

import pytest
import torch
import transformers as T
from peft import AutoPeftModel, PeftModel, get_peft_model

from peft_kadapt import KAdaptationConfig, KAdaptationLayer
from peft_kadapt.config import TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING

from conftest import make_vit, outputs, tiny_vit_config, vit_inputs


TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=32, patch_size=8
)
VISION_MODELS = {
    "vit": (T.ViTConfig, T.ViTForImageClassification, TINY),
    "deit": (T.DeiTConfig, T.DeiTForImageClassification, TINY),
    "dinov2": (T.Dinov2Config, T.Dinov2ForImageClassification, TINY),
    "beit": (T.BeitConfig, T.BeitForImageClassification, TINY),
    "swin": (
        T.SwinConfig,
        T.SwinForImageClassification,
        dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], image_size=32, patch_size=4, window_size=2),
    ),
    "clip_vision_model": (T.CLIPVisionConfig, T.CLIPVisionModel, TINY),
    "siglip_vision_model": (T.SiglipVisionConfig, T.SiglipVisionModel, TINY),
}


@pytest.mark.parametrize("model_type", sorted(VISION_MODELS))
def test_default_targets_are_query_and_value(model_type):
    config_cls, model_cls, kwargs = VISION_MODELS[model_type]
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs))
    assert model.config.model_type == model_type
    peft_model = get_peft_model(model, KAdaptationConfig(n=4))
    adapted = {name.rsplit(".", 1)[1] for name, m in peft_model.named_modules() if isinstance(m, KAdaptationLayer)}
    assert adapted == {"q_proj", "v_proj"}
    x = torch.randn(2, 3, 32, 32)
    out = peft_model(pixel_values=x)
    assert torch.isfinite(out[0]).all()


def test_default_mapping_covers_transformers_4_and_5_names():
    for model_type in ("vit", "deit", "dinov2", "beit", "swin", "clip_vision_model", "siglip_vision_model"):
        assert set(TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING[model_type]) == {
            "query",
            "value",
            "q_proj",
            "v_proj",
        }


def test_gradient_checkpointing_gives_adapter_gradients():
    model = get_peft_model(make_vit(), KAdaptationConfig(n=4, init_weights=False, modules_to_save=["classifier"]))
    model.train()
    model.gradient_checkpointing_enable()  # non-reentrant by default in transformers 5
    outputs(model, vit_inputs()).sum().backward()
    for _, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, KAdaptationLayer)]:
        assert layer.kadapt_u["default"].grad is not None and layer.kadapt_u["default"].grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_keeps_fp32_adapter_and_half_outputs(dtype):
    torch.manual_seed(0)
    base = T.ViTForImageClassification(tiny_vit_config()).to(dtype).eval()
    model = get_peft_model(base, KAdaptationConfig(n=4, init_weights=False))
    layers = [m for m in model.modules() if isinstance(m, KAdaptationLayer)]
    assert all(m.kadapt_u["default"].dtype == torch.float32 for m in layers)
    assert all(m.slow_weights("default").dtype == torch.float32 for m in layers)
    x = vit_inputs()["pixel_values"].to(dtype)
    for mode in ("factored", "materialized"):
        for m in layers:
            m.forward_mode["default"] = mode
        out = model(pixel_values=x).logits
        assert out.dtype == dtype and torch.isfinite(out).all()
    reference = get_peft_model(T.ViTForImageClassification(tiny_vit_config()).eval(), KAdaptationConfig(n=4))
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    torch.testing.assert_close(out.float(), reference(pixel_values=x.float()).logits, atol=0.05, rtol=0.05)


def test_auto_peft_model_and_load_adapter(tmp_path):
    torch.manual_seed(0)
    T.ViTForImageClassification(tiny_vit_config()).save_pretrained(tmp_path / "base")
    base = T.ViTForImageClassification.from_pretrained(tmp_path / "base")
    model = get_peft_model(base, KAdaptationConfig(n=4, init_weights=False, modules_to_save=["classifier"]))
    model.eval()
    inputs = vit_inputs()
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "KADAPTATION" and config["n"] == 4
    loaded = AutoPeftModel.from_pretrained(tmp_path / "a")
    assert isinstance(loaded, PeftModel) and isinstance(loaded.get_base_model(), T.ViTForImageClassification)
    torch.testing.assert_close(outputs(loaded, inputs), expected)

    torch.manual_seed(3)
    second = get_peft_model(
        T.ViTForImageClassification.from_pretrained(tmp_path / "base"),
        KAdaptationConfig(n=2, r=2, init_weights=False, modules_to_save=["classifier"]),
    )
    second.eval()
    expected_second = outputs(second, inputs)
    second.save_pretrained(tmp_path / "b")
    loaded.load_adapter(tmp_path / "b", adapter_name="b")
    loaded.set_adapter("b")
    torch.testing.assert_close(outputs(loaded, inputs), expected_second)
    loaded.set_adapter("default")
    torch.testing.assert_close(outputs(loaded, inputs), expected)


def test_trainer_trains_and_resumes_exactly(tmp_path):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "pixel_values": torch.randn(16, 3, 32, 32, generator=g).tolist(),
            "labels": torch.randint(0, 3, (16,), generator=g).tolist(),
        }
    ).with_format("torch")

    def run(output_dir, max_steps, resume=None):
        torch.manual_seed(0)
        model = get_peft_model(make_vit(), KAdaptationConfig(n=4, modules_to_save=["classifier"]))
        args = T.TrainingArguments(
            output_dir=str(output_dir),
            max_steps=max_steps,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            save_steps=2,
            report_to=[],
            use_cpu=True,
            seed=0,
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = T.Trainer(model=model, args=args, train_dataset=data)
        trainer.train(resume_from_checkpoint=resume)
        return model, trainer

    full, _ = run(tmp_path / "full", 4)
    start = {k: v for k, v in full.state_dict().items() if "kadapt_v" in k}
    assert all(v.abs().sum() > 0 for v in start.values())  # the Kronecker term trained
    run(tmp_path / "part", 2)
    resumed, _ = run(tmp_path / "part", 4, resume=str(tmp_path / "part" / "checkpoint-2"))
    for key, value in full.state_dict().items():
        if "kadapt_" in key or "modules_to_save" in key:
            torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)
