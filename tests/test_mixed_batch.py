"""Mixed-adapter batches: `model(x, adapter_names=[...])` gives each sample its own adapter (and head), as PEFT's LoRA."""

import pytest
import torch
from peft import get_peft_model

from peft_kadapt import KAdaptationConfig

from conftest import make_vit


def two_adapters(**kwargs):
    config = dict(n=4, init_weights=False, modules_to_save=["classifier"], **kwargs)
    model = get_peft_model(make_vit(), KAdaptationConfig(**config), adapter_name="cats")
    model.add_adapter("dogs", KAdaptationConfig(**{**config, "target_modules": ["q_proj", "fc1"]}))
    with torch.no_grad():  # distinct heads, so that the head's choice shows in the output
        model.base_model.model.classifier.modules_to_save["dogs"].weight.mul_(-2.0)
    return model.eval()


@pytest.mark.parametrize("forward_mode", ["auto", "factored", "materialized"])
def test_each_sample_gets_its_own_adapter(forward_mode):
    model = two_adapters(forward_mode=forward_mode)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    names = ["cats", "dogs", "__base__", "cats", "dogs"]
    with torch.no_grad():
        mixed = model(pixel_values=x, adapter_names=names).logits
        alone = {}
        for name in ("cats", "dogs"):
            model.set_adapter(name)
            alone[name] = model(pixel_values=x).logits
        with model.disable_adapter():
            alone["__base__"] = model(pixel_values=x).logits
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], alone[name][i], msg=f"sample {i} ({name})")
    assert not torch.allclose(alone["cats"], alone["dogs"]) and not torch.allclose(alone["cats"], alone["__base__"])


def test_mixed_batch_errors():
    model = two_adapters()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="Length of `adapter_names` should be the same as the number of inputs"):
        model(pixel_values=x, adapter_names=["cats"])
    with pytest.raises(ValueError, match="Trying to infer with non-existing adapter\\(s\\): c"):
        model(pixel_values=x, adapter_names=["cats", "c"])
    with pytest.raises(TypeError, match="should be a list of adapter names"):
        model(pixel_values=x, adapter_names="cats")
    model.train()
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when the model is in training mode"):
        model(pixel_values=x, adapter_names=["cats", "dogs"])
    model.eval()
    model.merge_adapter(["cats"])
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when there are merged adapters"):
        model(pixel_values=x, adapter_names=["cats", "dogs"])


def test_generate_with_one_adapter_per_sequence():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    # large updates, so that the two adapters decode differently from each other and from the base
    model = get_peft_model(GPT2LMHeadModel(config), KAdaptationConfig(n=4, init_weights=False, alpha=400), "cats")
    model.add_adapter("dogs", KAdaptationConfig(n=4, init_weights=False, alpha=400))
    model.eval()
    ids = torch.randint(1, 50, (3, 5), generator=torch.Generator().manual_seed(2))
    names = ["cats", "dogs", "__base__"]
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    mixed = model.generate(input_ids=ids, adapter_names=names, **settings)
    alone = {}
    for name in ("cats", "dogs"):
        model.set_adapter(name)
        alone[name] = model.generate(input_ids=ids, **settings)
    with model.disable_adapter():
        alone["__base__"] = model.generate(input_ids=ids, **settings)
    for i, name in enumerate(names):
        assert torch.equal(mixed[i], alone[name][i]), name
    assert not torch.equal(alone["cats"], alone["dogs"]) and not torch.equal(alone["cats"], alone["__base__"])
