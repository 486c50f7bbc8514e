"""Sharing on the Hub without network: a local stand-in server records the upload; loading by repo id from a cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import get_peft_model

from peft_kadapt import KAdaptationConfig
from peft_kadapt.hub import push_adapter
from peft_kadapt.training.cli import main as kadapt

from conftest import make_vit, vit_inputs
from fake_hub import FakeHub


@pytest.fixture
def adapter_dir(tmp_path):
    model = get_peft_model(make_vit(), KAdaptationConfig(n=4, init_weights=False, modules_to_save=["classifier"]))
    model.save_pretrained(tmp_path / "adapter")
    metrics = {
        "dataset": "digits",
        "test_accuracy": 0.8125,
        "validation_accuracy": 0.9,
        "shots": 10,
        "model_name_or_path": "/some/local/dir",
        "trainable_parameters": 1234,
    }
    (tmp_path / "adapter" / "metrics.json").write_text(json.dumps(metrics))
    return tmp_path / "adapter"


@pytest.fixture(autouse=True)
def online_to_the_fake_hub(monkeypatch):
    # the suite runs with HF_HUB_OFFLINE=1; uploads here only reach the loopback server started by each test
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_push_uploads_adapter_and_card(adapter_dir, monkeypatch):
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_from_env")
        url = push_adapter(adapter_dir, "someone/vit-kadapt", base_model="google/vit-base-patch16-224-in21k")
    assert url.startswith(hub.url) and hub.repos[0]["name"] == "vit-kadapt"
    assert all(
        r["headers"].get("authorization", r["headers"].get("Authorization")) == "Bearer hf_from_env"
        for r in hub.requests
    )
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "metrics.json"} <= set(hub.files)
    assert hub.files["adapter_model.safetensors"] == (adapter_dir / "adapter_model.safetensors").read_bytes()
    config = json.loads(hub.files["adapter_config.json"])
    assert (
        config["base_model_name_or_path"] == "google/vit-base-patch16-224-in21k"
        and config["peft_type"] == "KADAPTATION"
    )
    card = hub.files["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == "google/vit-base-patch16-224-in21k" and meta["base_model_relation"] == "adapter"
    assert {"peft", "kadaptation"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.8125
    snippet = card.split("```python")[1]
    assert snippet.strip().startswith("import peft_kadapt") and "someone/vit-kadapt" in snippet
    assert "| n | 4 |" in card and "| test_accuracy | 0.8125 |" in card
    # the local copy is untouched: its config still names what it was trained from
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] is None


def test_push_refuses_a_local_base_model_and_works_from_the_cli(adapter_dir, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="local path, which means nothing on the Hub"):
        push_adapter(adapter_dir, "someone/x")
    with pytest.raises(ValueError, match="must be a Hub id, not a local path"):
        push_adapter(adapter_dir, "someone/x", base_model=str(tmp_path))
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_cli")
        assert kadapt(["push", str(adapter_dir), "someone/cli", "--base_model", "facebook/dinov2-small"]) == 0
    assert front_matter(hub.files["README.md"].decode())["base_model"] == "facebook/dinov2-small"


@pytest.mark.slow
def test_load_by_repo_id_from_the_cache_offline(adapter_dir, tmp_path):
    from peft import PeftModel

    model = PeftModel.from_pretrained(make_vit(), adapter_dir).eval()
    expected = model(**vit_inputs()).logits
    # the layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<commit>/<files>}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--vit-kadapt"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (snapshot / name).write_bytes((adapter_dir / name).read_bytes())
    torch.save(expected, tmp_path / "expected.pt")
    code = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
import torch, peft_kadapt
from peft import PeftModel
from conftest import make_vit, vit_inputs
model = PeftModel.from_pretrained(make_vit(), "someone/vit-kadapt").eval()
torch.testing.assert_close(model(**vit_inputs()).logits, torch.load({str(tmp_path / "expected.pt")!r}))
print("ok")
"""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
