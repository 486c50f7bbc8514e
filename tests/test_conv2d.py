"""nn.Conv2d (groups=1): the kernel as an (out, in·kh·kw) matrix, factored (unfolded patches) or materialised, with the
guarantees of Linear; ConvNeXt defaults."""

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from torch import nn

from peft_kadapt import KAdaptationConfig, Linear
from peft_kadapt.budget import parameter_report


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # in·kh·kw = 27
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2)  # 72
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


X = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("forward_mode", ["auto", "factored", "materialized"])
def test_conv2d_output_is_base_plus_reference_delta(forward_mode):
    config = KAdaptationConfig(n=4, target_modules=["conv2"], init_weights=False, forward_mode=forward_mode)
    model = get_peft_model(TinyConvNet(), config).eval()
    layer = model.base_model.model.conv2
    A, u, v = layer.slow_weights("default"), layer.kadapt_u["default"], layer.kadapt_v["default"]
    reference = layer.scaling["default"] * sum(torch.kron(A[i], u[:, i] @ v[:, i].T) for i in range(4))  # (12, 72)
    base = layer.get_base_layer()
    x = torch.randn(2, 8, 9, 9)
    expected = F.conv2d(x, base.weight + reference.view(12, 8, 3, 3), base.bias, stride=2, padding=2, dilation=2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    model.train()  # with gradients, through the chosen form
    layer(x).square().sum().backward()
    assert layer.kadapt_u["default"].grad.abs().sum() > 0 and layer.kadapt_v["default"].grad.abs().sum() > 0


def test_conv2d_trains_merges_saves_and_counts(tmp_path):
    model = get_peft_model(TinyConvNet(), KAdaptationConfig(n=4, target_modules=["conv2"], modules_to_save=["head"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(X).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        expected = model(X)
        model.save_pretrained(tmp_path)
        loaded = PeftModel.from_pretrained(TinyConvNet(), tmp_path).eval()
        torch.testing.assert_close(loaded(X), expected)
        torch.testing.assert_close(loaded.merge_and_unload()(X), expected, rtol=1e-4, atol=1e-5)
    report = parameter_report(TinyConvNet(), KAdaptationConfig(n=4, target_modules=["conv2"]))
    assert report.total == (12 + 72) + 4**3


def test_conv2d_n_must_divide_out_and_in_times_kernel():
    with pytest.raises(ValueError, match=r"'conv1' has weight shape \(8, 27\) and n=2.*\[1\]"):
        get_peft_model(TinyConvNet(), KAdaptationConfig(n=2, target_modules=["conv1"]))


def test_convnext_has_default_targets():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    model = get_peft_model(ConvNextForImageClassification(config), KAdaptationConfig(n=4))
    adapted = sorted(n for n, m in model.named_modules() if hasattr(m, "kadapt_u"))
    assert adapted and all(n.endswith(("pwconv1", "pwconv2")) for n in adapted)


CONV_PADDINGS = [(dict(padding=1, padding_mode=mode), 1) for mode in ("zeros", "reflect", "replicate", "circular")] + [
    (dict(padding="same", padding_mode="reflect", dilation=2), 1),
    (dict(padding="same", padding_mode="zeros", kernel_size=4), 1),  # even kernel: the odd pixel goes right and bottom
    (dict(padding="valid"), 1),
    (dict(padding=(2, 1), padding_mode="circular"), 2),
]


@pytest.mark.parametrize("conv_kwargs, stride", CONV_PADDINGS, ids=lambda v: str(v))
@pytest.mark.parametrize("forward_mode", ["factored", "materialized"])
def test_every_padding_and_padding_mode_matches_the_merged_convolution(conv_kwargs, stride, forward_mode):
    """The branch pads as the base layer does, so the adapted layer equals one convolution with W + ΔW."""
    kwargs = {"kernel_size": 3, **conv_kwargs}
    torch.manual_seed(0)
    base = nn.Conv2d(4, 8, stride=stride, **kwargs)
    model = get_peft_model(
        nn.Sequential(base),
        KAdaptationConfig(n=4, target_modules=["0"], init_weights=False, forward_mode=forward_mode),
    ).eval()
    x = torch.randn(2, 4, 9, 10)
    with torch.no_grad():
        adapted = model(x)
        reference = nn.Conv2d(4, 8, stride=stride, **kwargs)
        reference.load_state_dict(base.state_dict())
        reference.weight += model.base_model.model[0].get_delta_weight("default")
        torch.testing.assert_close(adapted, reference(x), rtol=1e-5, atol=1e-5)
        assert not isinstance(model.base_model.model[0], Linear)  # a sibling of Linear, not a kind of it
        torch.testing.assert_close(model.merge_and_unload()(x), adapted, rtol=1e-5, atol=1e-5)
