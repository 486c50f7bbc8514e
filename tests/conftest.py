import os
import subprocess
import sys


# the default test run never touches the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

import peft_kadapt  # noqa: E402, F401


class MLP(nn.Module):
    """Toy MLP in the style of PEFT's test_custom_models.py."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.lin0 = nn.Linear(12, width)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(width, width)
        self.lin2 = nn.Linear(width, 2)

    def forward(self, X):
        return self.lin2(self.relu(self.lin1(self.relu(self.lin0(X)))))


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP().eval()


def tiny_vit_config(**kwargs) -> ViTConfig:
    defaults = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    defaults.update(kwargs)
    return ViTConfig(**defaults)


def make_vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return ViTForImageClassification(tiny_vit_config(**kwargs)).eval()


def mlp_inputs(batch: int = 5) -> dict:
    return {"X": torch.randn(batch, 12, generator=torch.Generator().manual_seed(1))}


def vit_inputs(batch: int = 3) -> dict:
    return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))}


def outputs(model, inputs) -> torch.Tensor:
    out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.fixture
def vit():
    return make_vit()


@pytest.fixture
def mlp():
    return make_mlp()


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    """A saved random tiny ViT checkpoint (its path), for the command-line tests."""
    path = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    ViTForImageClassification(tiny_vit_config()).save_pretrained(path)
    return str(path)


def train_args(backbone, out, *extra) -> list[str]:
    """`kadapt train` arguments for a short run of `backbone` (the tiny ViT) on the offline digits, into `out`."""
    common = "--dataset_name digits --shots 10 --test_per_class 10 --resolution 32 --num_train_epochs 2 --kadapt_n 4"
    return [
        "train",
        "--model_name_or_path",
        backbone,
        *common.split(),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        *extra,
    ]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run_two_processes(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`args` under torchrun as two CPU processes of one thread each; the finished launch, its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout, env=env)
