"""Seeing the cost of a config before training, and proposing configs for a parameter budget."""

import pytest
from peft import get_peft_model

from peft_kadapt import KAdaptationConfig
from peft_kadapt.budget import parameter_report, propose_configs
from peft_kadapt.training.cli import main as kadapt

from conftest import make_vit


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=4),
        dict(n=8, r=2),
        dict(n=8, slow_rank=2),
        dict(n=4, slow_rank=1, share_slow_weights="global"),
        dict(n=2, share_slow_weights="none", target_modules=["q_proj", "v_proj", "fc2"]),
    ],
)
def test_report_matches_the_built_adapter(kwargs):
    model = make_vit()
    report = parameter_report(model, KAdaptationConfig(**kwargs), lora_rank=4)
    built = get_peft_model(make_vit(), KAdaptationConfig(**kwargs))
    assert report.total == built.get_nb_trainable_parameters()[0]
    n, rho = kwargs["n"], kwargs.get("slow_rank")
    assert set(report.per_group.values()) == {n**3 if rho is None else 2 * n * n * rho}
    assert report.lora == 4 * report.fast // kwargs.get("r", 1)
    assert "| q_proj | 2 |" in report.to_markdown()


def test_proposals_fit_the_budget_and_rank_by_expressiveness():
    model = make_vit()
    proposals = propose_configs(model, budget=900, top=10)
    assert proposals
    for setting, report in proposals:
        assert report.total <= 900
        built = get_peft_model(make_vit(), KAdaptationConfig(**setting))
        assert built.get_nb_trainable_parameters()[0] == report.total
        assert setting["slow_rank"] is None or 2 * setting["slow_rank"] < setting["n"]
    ranks = [report.max_rank for _, report in proposals]
    assert ranks == sorted(ranks, reverse=True)


def test_budget_below_the_smallest_configuration():
    with pytest.raises(
        ValueError, match=r"A budget of 10 parameters is below the smallest KAdaptation on these layers \(258"
    ):
        propose_configs(make_vit(), budget=10)


def test_training_command_reports_and_proposes(tmp_path, capsys):
    make_vit().save_pretrained(tmp_path)
    kadapt(
        [
            "params",
            "--model_name_or_path",
            str(tmp_path),
            "--kadapt_n",
            "4",
            "--kadapt_slow_rank",
            "1",
            "--parameter_budget",
            "2000",
        ]
    )
    out = capsys.readouterr().out
    assert "KAdaptation total: 320 (fast 256 + slow 64)" in out and "LoRA r=8 on the same layers: 2,048" in out
    assert "Settings within 2,000 parameters" in out
