"""Sharing a KAdaptation adapter on the Hugging Face Hub with a model card that says how to load it."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import httpx
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled


# Offline aliases of `peft_kadapt.training` and the Hub model each one stands for (written as `base_model` when sharing)
HUB_EQUIVALENTS = {"dinov2-small-imgfocus": "facebook/dinov2-small"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


# config.json: the head's configuration (its classes, id2label / label2id), which `load_image_classifier` restores
SHARED_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "README.md",
    "metrics.json",
    "training_curve.png",
)


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub could not be reached (or refused the request): what was being done, why, what to set."""

    def __init__(self, doing: str, error: BaseException):
        status = getattr(getattr(error, "response", None), "status_code", None)
        reason = f"HTTP {status}" if status else f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        advice = (
            "The token was refused or lacks rights: set HF_TOKEN (or run `hf auth login`) with write access."
            if status in (401, 403)
            else "The Hugging Face Hub was not reachable. Set HF_ENDPOINT to a reachable mirror, HF_HUB_OFFLINE=1 to "
            "use only what is cached locally, and HF_TOKEN for private repositories."
        )
        super().__init__(f"Failed {doing} ({reason}). {advice}")


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repository id ("name" or "owner/name")."""
    return bool(_HUB_ID.match(name))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): repair it or write it again.") from None


def read_adapter_config(adapter_dir: str | os.PathLike, weights: bool = False) -> dict:
    """adapter_config.json of an adapter folder, with errors that name the file; `weights=True` also requires the
    weights file (PEFT would otherwise try the Hub for it and fail with a network error)."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{adapter_dir} has no adapter_config.json: pass the directory that `save_pretrained` wrote."
        )
    config = _read_json(path)
    if (
        weights
        and (adapter_dir / "adapter_model.bin").is_file()
        and not (adapter_dir / "adapter_model.safetensors").is_file()
    ):
        raise ValueError(
            f"{adapter_dir} holds adapter_model.bin (PyTorch's pickle format), not adapter_model.safetensors: load it "
            "and save it again with `model.save_pretrained(dir)` (safetensors is the default), then share that."
        )
    if weights and not (adapter_dir / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} has adapter_config.json but no adapter_model.safetensors: the adapter was not saved "
            "completely. Save it again with `model.save_pretrained(dir)`."
        )
    return config


def hub_id_for(name_or_path: str) -> str | None:
    """A Hub id to name as `base_model` when sharing: aliases map to their Hub equivalent, a converted checkpoint to
    the one its `kadapt_source.json` names, other local paths to None."""
    if name_or_path in HUB_EQUIVALENTS:
        return HUB_EQUIVALENTS[name_or_path]
    source = Path(name_or_path) / "kadapt_source.json"
    if source.exists():
        return json.loads(source.read_text())["hub_equivalent"]
    if os.path.exists(name_or_path) or not is_hub_id(name_or_path):
        return None  # a local path (existing or not) is never a Hub id
    return name_or_path


METHOD_CARDS = {  # peft_type -> what a model card says about the method
    "KADAPTATION": {
        "name": "KAdaptation",
        "tags": ("kadaptation", "kronecker-adaptation"),
        "description": "[KAdaptation](https://arxiv.org/abs/2203.16329) adapter (Kronecker adaptation of the linear "
        "layers of a vision transformer)",
        "settings": ("n", "r", "alpha", "slow_rank", "kadapt_dropout", "share_slow_weights", "init_weights"),
        "load_note": (
            "KAdaptation is a PEFT method registered by the `peft_kadapt` package: import it first, or PEFT raises "
            "`KeyError: 'KADAPTATION'`.",
            "",
        ),
        "imports": ("import peft_kadapt  # registers the 'kadaptation' method with PEFT",),
    },
    "LORA": {
        "name": "LoRA",
        "tags": ("lora",),
        "description": "[LoRA](https://arxiv.org/abs/2106.09685) adapter",
        "settings": ("r", "lora_alpha", "lora_dropout", "bias"),
        "load_note": (),
        "imports": (),
    },
    "LOKR": {
        "name": "LoKr",
        "tags": ("lokr",),
        "description": "[LoKr](https://arxiv.org/abs/2309.14859) adapter (Kronecker product, from LyCORIS)",
        "settings": ("r", "alpha", "rank_dropout", "decompose_factor"),
        "load_note": (),
        "imports": (),
    },
    None: {
        "name": "PEFT",
        "tags": ("adapter",),
        "description": "PEFT adapter",
        "settings": ("r",),
        "load_note": (),
        "imports": (),
    },
}


RESULT_KEYS = (
    "dataset",
    "shots",
    "sampling_seed",
    "resolution",
    "train_images",
    "validation_images",
    "test_images",
    "validation_accuracy",
    "test_accuracy",
    "trainable_parameters",
    "saved_file_bytes",
    "wall_time_s",
    "learning_rate",
    "num_train_epochs",
)


def _card_data(config: dict, metrics: dict | None, base_model: str | None, repo_id: str | None):
    from huggingface_hub import EvalResult, ModelCardData

    method = METHOD_CARDS.get(config.get("peft_type"), METHOD_CARDS[None])
    results = None
    if metrics and metrics.get("dataset") and metrics.get("test_accuracy") is not None:
        results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=metrics["dataset"],
                dataset_name=metrics["dataset"],
                metric_type="accuracy",
                metric_value=round(metrics["test_accuracy"], 4),
            )
        ]
    return ModelCardData(
        library_name="peft",
        base_model=base_model,
        base_model_relation="adapter" if base_model else None,
        pipeline_tag="image-classification",
        tags=["peft", *method["tags"], "image-classification", "vision"],
        model_name=repo_id or f"{method['tags'][0]}-adapter",
        eval_results=results,
    )


def _load_section(config: dict, labels: list[str] | None, base_model: str | None, repo_id: str | None) -> list[str]:
    method = METHOD_CARDS.get(config.get("peft_type"), METHOD_CARDS[None])
    head = "num_labels=NUM_LABELS"
    if labels:
        head = f"num_labels={len(labels)}, id2label=dict(enumerate(LABELS)), label2id={{c: i for i, c in enumerate(LABELS)}}"
    lines = ["## How to load", "", *method["load_note"], "```python", *method["imports"]]
    lines += ["from peft import PeftModel", "from transformers import AutoModelForImageClassification", ""]
    if labels:
        lines.append(f"LABELS = {labels!r}  # the classes, in the order of the head's outputs")
    lines += [
        f"base = AutoModelForImageClassification.from_pretrained({base_model or 'BASE_MODEL'!r}, {head})",
        f"model = PeftModel.from_pretrained(base, {repo_id or 'ADAPTER_DIR'!r})",
        "model = model.merge_and_unload()  # optional: a plain model, no inference overhead",
        "```",
    ]
    if config.get("peft_type") == "KADAPTATION":
        lines += [
            "",
            f"Or in one line, the head's classes restored from this folder's `config.json`: "
            f"`peft_kadapt.hub.load_image_classifier({repo_id or 'ADAPTER_DIR'!r})`.",
        ]
    return lines


def _card_body(config: dict, metrics: dict | None, base_model: str | None, repo_id: str | None) -> str:
    method = METHOD_CARDS.get(config.get("peft_type"), METHOD_CARDS[None])
    labels = (metrics or {}).get("labels")
    targets = config.get("target_modules")
    lines = [
        f"# {repo_id or method['name'] + ' adapter'}",
        "",
        f"A {method['description']} for `{base_model or config.get('base_model_name_or_path')}`, made with "
        "[peft_kadapt](https://pypi.org/project/peft-kadapt/).",
        "",
        *_load_section(config, labels, base_model, repo_id),
        "",
        "## Hyper-parameters",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {config.get(k)} |" for k in method["settings"]],
        f"| target_modules | {sorted(targets) if isinstance(targets, list) else targets} |",
        f"| modules_to_save | {config.get('modules_to_save')} |",
    ]
    if labels:
        lines += [
            "",
            "## Classes",
            "",
            "| index | class |",
            "|---|---|",
            *[f"| {i} | {c} |" for i, c in enumerate(labels)],
        ]
    if metrics:
        lines += ["", "## Results (measured by the training run that wrote this adapter)", "", "| metric | value |"]
        lines += ["|---|---|", *[f"| {k} | {metrics[k]} |" for k in RESULT_KEYS if k in metrics]]
        lines += ["", "The checkpoint was chosen on the validation split; test accuracy was measured once."]
    return "\n".join(lines) + "\n"


def _card_text(config: dict, metrics: dict | None, base_model: str | None, repo_id: str | None) -> str:
    from huggingface_hub import ModelCard

    data = _card_data(config, metrics, base_model, repo_id)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_card_body(config, metrics, base_model, repo_id)}"))


def write_model_card(
    adapter_dir: str | os.PathLike,
    metrics: dict | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write README.md (the model card) into an adapter directory."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    if metrics is None and (adapter_dir / "metrics.json").exists():
        metrics = _read_json(adapter_dir / "metrics.json")
    if metrics is not None and "labels" not in metrics and (adapter_dir / "config.json").is_file():
        id2label = _read_json(adapter_dir / "config.json").get("id2label") or {}
        metrics = {**metrics, "labels": [id2label[k] for k in sorted(id2label, key=int)] or None}
    base_model = base_model or hub_id_for(
        (metrics or {}).get("model_name_or_path") or config.get("base_model_name_or_path") or ""
    )
    path = adapter_dir / "README.md"
    path.write_text(_card_text(config, metrics, base_model, repo_id))
    return path


def load_image_classifier(adapter: str | os.PathLike, base_model: str | None = None, **kwargs):
    """A `PeftModel` for an image-classification adapter saved by peft_kadapt (a folder or a Hub repo): the base model
    (`base_model`, default the adapter's) with the head it was trained with, its classes and their order from the
    adapter's `config.json` (`id2label`, `label2id`), and the adapter loaded. `kwargs` go to `PeftModel.from_pretrained`.
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig, AutoModelForImageClassification

    head = AutoConfig.from_pretrained(str(adapter))  # config.json of the adapter folder or repo
    base_model = base_model or PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path
    base = AutoModelForImageClassification.from_pretrained(
        base_model,
        num_labels=head.num_labels,
        id2label=head.id2label,
        label2id=head.label2id,
        ignore_mismatched_sizes=True,  # the base checkpoint's own head, if any, has other classes
    )
    return PeftModel.from_pretrained(base, str(adapter), **kwargs)


def push_adapter(
    adapter_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    base_model: str | None = None,
    commit_message: str = "Upload KAdaptation adapter",
) -> str:
    """Upload an adapter directory with a correct model card. Honours HF_TOKEN and HF_ENDPOINT. Returns the commit URL.

    `base_model` (a Hub id) defaults to the Hub equivalent of the adapter's base model; a local path is never written
    as base model: pass `base_model` when the base came from disk.
    """
    from huggingface_hub import HfApi

    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir, weights=True)
    if config.get("peft_type") != "KADAPTATION":
        raise ValueError(
            f"{adapter_dir} holds a {config.get('peft_type')} adapter, not a KAdaptation one: share it with PEFT's own "
            "`model.push_to_hub(repo_id)`."
        )
    metrics = _read_json(adapter_dir / "metrics.json") if (adapter_dir / "metrics.json").exists() else None
    source = (metrics or {}).get("model_name_or_path") or config.get("base_model_name_or_path") or ""
    base_model = base_model or hub_id_for(source)
    if not base_model:
        raise ValueError(
            f"The adapter's base model {source!r} is a local path, which means nothing on the Hub: pass "
            "the Hub id it corresponds to (`base_model=` / `--base_model`)."
        )
    if os.path.exists(base_model):
        raise ValueError(f"`base_model` must be a Hub id, not a local path ({base_model!r}).")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token or os.environ.get("HF_TOKEN"))
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for name in SHARED_FILES:
            if (adapter_dir / name).exists():
                shutil.copy2(adapter_dir / name, staging / name)
        config["base_model_name_or_path"] = base_model  # never a local absolute path on the Hub
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        write_model_card(staging, metrics=metrics, base_model=base_model, repo_id=repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(staging), repo_id=repo_id, commit_message=commit_message)
        except (httpx.TransportError, OfflineModeIsEnabled, HfHubHTTPError) as error:
            raise HubUnreachableError(f"uploading {adapter_dir} to {repo_id!r}", error) from None
    return getattr(info, "commit_url", str(info))
