"""Registration with PEFT: idempotent, reload-safe, and usable from fresh and spawned processes."""

import importlib
import inspect
import multiprocessing
import subprocess
import sys
import textwrap
from dataclasses import fields

import pytest
from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import peft_kadapt


def test_registered_names():
    assert PeftType.KADAPTATION.value == "KADAPTATION" and PeftType("KADAPTATION") is PeftType.KADAPTATION
    assert "KADAPTATION" in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.KADAPTATION] is peft_kadapt.KAdaptationConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.KADAPTATION] is peft_kadapt.KAdaptationModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.KADAPTATION] == "kadapt_"
    assert peft_kadapt.KAdaptationConfig().peft_type.value == "KADAPTATION"


def test_import_twice_register_twice_and_reload_are_harmless():
    peft_kadapt.register()
    peft_kadapt.register()
    members = list(PeftType).count(PeftType.KADAPTATION)
    reloaded = importlib.reload(peft_kadapt)
    assert list(PeftType).count(PeftType.KADAPTATION) == members == 1
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.KADAPTATION] is reloaded.KAdaptationConfig
    config = PeftConfig.from_peft_type(peft_type="KADAPTATION", n=8)
    assert isinstance(config, reloaded.KAdaptationConfig) and config.n == 8


def _load_config_in_worker(path, queue):
    from peft import PeftConfig

    import peft_kadapt  # noqa: F401  (a spawned worker imports afresh)

    queue.put(PeftConfig.from_pretrained(path).n)


@pytest.mark.slow
def test_spawned_worker_process(tmp_path):
    peft_kadapt.KAdaptationConfig(n=8).save_pretrained(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    worker = ctx.Process(target=_load_config_in_worker, args=(str(tmp_path), queue))
    worker.start()
    worker.join(120)
    assert worker.exitcode == 0 and queue.get(timeout=5) == 8


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_fresh_process_round_trip_and_clear_failure_without_import(tmp_path):
    save = run_python(
        f"""
        import sys; sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        import torch, peft_kadapt
        from peft import get_peft_model
        from conftest import make_vit, vit_inputs
        model = get_peft_model(make_vit(), peft_kadapt.KAdaptationConfig(n=4, init_weights=False,
                                                                          modules_to_save=["classifier"]))
        model.save_pretrained("adapter")
        torch.save(model(**vit_inputs()).logits, "expected.pt")
        """,
        tmp_path,
    )
    assert save.returncode == 0, save.stderr
    load = run_python(
        f"""
        import sys; sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        import torch, peft_kadapt
        from peft import PeftModel
        from conftest import make_vit, vit_inputs
        model = PeftModel.from_pretrained(make_vit(), "adapter").eval()
        torch.testing.assert_close(model(**vit_inputs()).logits, torch.load("expected.pt"))
        print("ok")
        """,
        tmp_path,
    )
    assert load.returncode == 0 and "ok" in load.stdout, load.stderr
    without = run_python('from peft import PeftConfig; PeftConfig.from_pretrained("adapter")', tmp_path)
    assert without.returncode != 0 and "KADAPTATION" in without.stderr  # documented: import peft_kadapt first


def test_every_config_field_is_documented():
    doc = inspect.getdoc(peft_kadapt.KAdaptationConfig)
    own = {f.name for f in fields(peft_kadapt.KAdaptationConfig)} - {f.name for f in fields(PeftConfig)}
    assert own >= {"n", "r", "alpha", "kadapt_dropout", "init_weights", "share_slow_weights"}
    for name in own:
        assert f"    {name} (`" in doc, f"{name} is not documented in the KAdaptationConfig docstring"


@pytest.mark.parametrize("copier", ["to_dict", "json", "pickle", "deepcopy"])
def test_config_round_trips(copier, tmp_path):
    import copy
    import pickle

    config = peft_kadapt.KAdaptationConfig(n=8, r=2, alpha=2.0, target_modules=["q_proj"], share_slow_weights="global")
    if copier == "to_dict":
        other = peft_kadapt.KAdaptationConfig(**{k: v for k, v in config.to_dict().items() if k != "peft_type"})
    elif copier == "json":
        config.save_pretrained(tmp_path)
        other = PeftConfig.from_pretrained(tmp_path)
    elif copier == "pickle":
        other = pickle.loads(pickle.dumps(config))
    else:
        other = copy.deepcopy(config)
    assert other.to_dict() == config.to_dict()


def test_unknown_config_keys_are_dropped_with_a_warning(tmp_path):
    import json

    peft_kadapt.KAdaptationConfig(n=8).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    data = json.loads(path.read_text())
    data["from_the_future"] = 1
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="from_the_future"):
        config = PeftConfig.from_pretrained(tmp_path)
    assert config.n == 8 and not hasattr(config, "from_the_future")
