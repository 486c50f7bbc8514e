"""Local intrinsic dimension: projections, the reparameterised model, d90, and the command."""

import json
import math

import pytest
import torch
from torch import nn
from transformers import ViTForImageClassification

from peft_kadapt.intrinsic import (
    DenseProjection,
    FastfoodProjection,
    RunResult,
    Subspace,
    d90,
    fwht,
    group_parameters,
    hadamard,
    make_projection,
)
from peft_kadapt.training.cli import main as kadapt

from conftest import make_vit, tiny_vit_config, vit_inputs


def test_d0_reproduces_the_frozen_model_exactly():
    model = make_vit()
    names = group_parameters(model, r"\.q_proj$")
    sub = Subspace(model, names, d=0)
    with torch.no_grad():
        assert torch.equal(sub(**vit_inputs()).logits, model(**vit_inputs()).logits)
    # and a zero θ_d in a real subspace too
    sub = Subspace(model, names, d=50)
    with torch.no_grad():
        torch.testing.assert_close(sub(**vit_inputs()).logits, model(**vit_inputs()).logits, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["dense", "fastfood"])
def test_only_theta_d_and_the_head_receive_gradient(kind):
    model = make_vit()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier."))
    sub = Subspace(model, group_parameters(model, r"\.v_proj$"), d=20, kind=kind)
    with torch.no_grad():
        sub.theta_d.normal_()
    sub(**vit_inputs()).logits.square().sum().backward()
    assert sub.theta_d.grad is not None and sub.theta_d.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.startswith("classifier."), name
    assert all(not b.requires_grad for b in sub.buffers())


def test_projection_moves_only_the_group_and_leaves_the_model_untouched():
    model = make_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = group_parameters(model, r"\.fc1$")
    sub = Subspace(model, names, d=10)
    with torch.no_grad():
        sub.theta_d.fill_(1.0)
        moved = sub.overrides()
    assert set(moved) == set(names) and all(not torch.equal(moved[n], before[n]) for n in names)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def explicit_fastfood(P: FastfoodProjection) -> torch.Tensor:
    """The (D × d) matrix of the Fastfood map, built from dense factors: an independent computation."""
    L = P.L
    H = hadamard(L, torch.float64)
    perm = torch.zeros(L, L, dtype=torch.float64)
    perm[torch.arange(L), P.Pi] = 1.0  # (Π x)_i = x[Π_i]
    full = H.T @ torch.diag(P.G.double()) @ perm @ H.T @ torch.diag(P.B.double())
    return (full * P.scale)[: P.D, : P.d]


@pytest.mark.parametrize("D,d", [(100, 7), (64, 64), (300, 1)])
def test_fastfood_matches_its_dense_equivalent_and_is_deterministic(D, d):
    P, Q = FastfoodProjection(D, d, seed=11), FastfoodProjection(D, d, seed=11)
    theta = torch.randn(d, dtype=torch.float64)
    got = P(theta.float()).double()
    torch.testing.assert_close(got, explicit_fastfood(P) @ theta, atol=1e-4, rtol=1e-4)
    assert torch.equal(P(theta.float()), Q(theta.float()))
    assert not torch.equal(P(theta.float()), FastfoodProjection(D, d, seed=12)(theta.float()))
    assert torch.equal(DenseProjection(D, d, 3).matrix, DenseProjection(D, d, 3).matrix)


@pytest.mark.parametrize("cls", [FastfoodProjection, DenseProjection])
def test_projections_keep_norms_in_expectation(cls):
    ratios = []
    for seed in range(300):
        theta = torch.randn(17, generator=torch.Generator().manual_seed(seed))
        ratios.append((cls(500, 17, seed)(theta).norm() ** 2 / theta.norm() ** 2).item())
    mean = sum(ratios) / len(ratios)
    assert abs(mean - 1.0) < 0.05, mean  # E‖Pθ‖² = ‖θ‖²


def test_fwht_is_the_hadamard_matrix():
    for length in (2, 64, 256, 2**13):
        x = torch.randn(3, length, dtype=torch.float64)
        torch.testing.assert_close(fwht(x), x @ hadamard(length, torch.float64))


class Constraints(nn.Module):
    """Li et al.'s toy: θ ∈ R^1000; block k of 100 entries must sum to k + 1. The solution set has dimension 990,
    so a random subspace through θ0 reaches it exactly when d >= 10: the true intrinsic dimension is 10."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(1000))

    def forward(self, **_):
        return self.theta.view(10, 100).sum(1) - torch.arange(1, 11, dtype=torch.float32)


def solve_in_subspace(model: Constraints, d: int, steps: int = 5000, lr: float = 0.2) -> float:
    """Adam on θ_d alone; the fraction of constraints met to 0.05 afterwards."""
    sub = Subspace(model, ["theta"], d)
    optimizer = torch.optim.Adam([sub.theta_d], lr=lr)
    for _ in range(steps):
        loss = sub().square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (sub().abs() < 0.05).float().mean().item()


@pytest.mark.slow
def test_toy_task_with_known_intrinsic_dimension():
    model = Constraints()
    results = [RunResult("toy", d, 1000, solve_in_subspace(model, d), 0.0) for d in (1, 2, 5, 8, 10, 12, 20, 50)]
    assert d90(results, reference=1.0) == 10, [(r.d, r.accuracy) for r in results]


def test_errors():
    with pytest.raises(ValueError, match=r"d=2000 is larger than the group's parameter count D=1000"):
        make_projection(1000, 2000, seed=0)
    with pytest.raises(ValueError, match=r"The group regex 'nothing_here\$' matches no module"):
        group_parameters(make_vit(), r"nothing_here$")


@pytest.mark.slow
def test_command_writes_every_output(tmp_path):
    torch.manual_seed(0)
    ViTForImageClassification(tiny_vit_config()).save_pretrained(tmp_path / "backbone")
    out = tmp_path / "out"
    kadapt(
        [
            "intrinsic-dim",
            "--model_name_or_path",
            str(tmp_path / "backbone"),
            "--dataset_name",
            "digits",
            "--resolution",
            "32",
            "--dims",
            "0,10,100",
            "--steps",
            "3",
            "--test_per_class",
            "5",
            "--val_per_class",
            "3",
            "--group",
            "qv=\\.(q_proj|v_proj)$",
            "--group",
            "mlp=\\.fc1$",
            "--output_dir",
            str(out),
        ]
    )
    data = json.loads((out / "intrinsic_dim.json").read_text())
    assert [(r["group"], r["d"]) for r in data["runs"]] == [(g, d) for g in ("qv", "mlp") for d in (0, 10, 100)]
    assert all(r["test_accuracy"] is not None for r in data["runs"])
    setting = data["recommended_setting"]  # the library defaults fit these layers, within no budget given
    assert (setting["n"], setting["r"], setting["slow_rank"]) == (8, 1, None)
    assert data["summary"]["qv"]["D"] == 2 * 2 * (32 * 32 + 32)
    assert "| **d90** |" in (out / "intrinsic_dim.md").read_text()
    assert (out / "intrinsic_dim.png").stat().st_size > 1000
    config = json.loads((out / "kadaptation_config" / "adapter_config.json").read_text())
    assert config["peft_type"] == "KADAPTATION" and config["target_modules"]
    # the training command accepts the recommended config
    kadapt(
        [
            "train",
            "--model_name_or_path",
            str(tmp_path / "backbone"),
            "--dataset_name",
            "digits",
            "--shots",
            "5",
            "--test_per_class",
            "5",
            "--resolution",
            "32",
            "--num_train_epochs",
            "1",
            "--disable_tqdm",
            "true",
            "--kadapt_config",
            str(out / "kadaptation_config"),
            "--output_dir",
            str(tmp_path / "trained"),
        ]
    )
    trained = json.loads((tmp_path / "trained" / "adapter_config.json").read_text())
    assert sorted(trained["target_modules"]) == sorted(config["target_modules"])
    with pytest.raises(ValueError, match=r"d=100000 is larger than group 'mlp'"):
        kadapt(
            [
                "intrinsic-dim",
                "--model_name_or_path",
                str(tmp_path / "backbone"),
                "--dataset_name",
                "digits",
                "--dims",
                "100000",
                "--group",
                "mlp=\\.fc1$",
                "--output_dir",
                str(out),
            ]
        )
    assert math.isfinite(data["wall_time_s"])


def test_every_choice_is_made_on_validation_and_the_budget_rules(tiny_backbone, tmp_path, monkeypatch):
    import peft_kadapt.training.intrinsic_sweep as sweep

    validation = {0: 0.5, 10: 0.9, 100: 1.0}
    test = {0: 1.0, 10: 0.1, 100: 0.1}  # were test used, d90 would be 0

    def scripted(model, names, d, *args, **kwargs):
        return validation[d], test[d]

    monkeypatch.setattr(sweep, "subspace_run", scripted)
    out = tmp_path / "out"
    data = kadapt(
        [
            "intrinsic-dim",
            "--model_name_or_path",
            tiny_backbone,
            "--dataset_name",
            "digits",
            "--resolution",
            "32",
            "--dims",
            "0,10,100",
            "--test_per_class",
            "5",
            "--val_per_class",
            "3",
            "--group",
            "qv=\\.(q_proj|v_proj)$",
            "--seeds",
            "0,1",
            "--parameter_budget",
            "600",
            "--output_dir",
            str(out),
        ]
    )
    data = json.loads((out / "intrinsic_dim.json").read_text())
    assert data["summary"]["qv"]["d90"] == 10 and data["summary"]["qv"]["reference_validation_accuracy"] == 1.0
    assert data["summary"]["qv"]["d90_per_seed"] == [10, 10]
    setting = data["recommended_setting"]
    assert setting["parameters"] <= 600 and setting["n"] != 8  # n = 8 costs 2 x 8³ + 256 > 600


@pytest.mark.slow
def test_full_reference_learning_rate_is_chosen_on_validation_and_a_sweep_resumes(
    tiny_backbone, tmp_path, monkeypatch
):
    import peft_kadapt.training.intrinsic_sweep as sweep

    calls = []

    def subspace(model, names, d, *args, **kwargs):
        calls.append(("subspace", d))
        return {0: 0.5, 10: 0.8, 100: 0.95}[d], 0.0

    def full(model, names, data, recipe, *args, **kwargs):
        calls.append(("full", recipe.learning_rate))
        assert recipe.prefix_learning_rates == (("classifier.", 1e-2),)  # the head at --lr, as in subspace runs
        return {1e-5: 0.7, 1e-4: 1.0, 1e-3: 0.2}[recipe.learning_rate], 1.0  # test accuracy would pick 1e-3

    monkeypatch.setattr(sweep, "subspace_run", subspace)
    monkeypatch.setattr(sweep, "full_run", full)
    out = tmp_path / "out"
    common = [
        "intrinsic-dim",
        "--model_name_or_path",
        tiny_backbone,
        "--dataset_name",
        "digits",
        "--resolution",
        "32",
        "--dims",
        "0,10,100",
        "--test_per_class",
        "5",
        "--val_per_class",
        "3",
        "--group",
        "qv=\\.(q_proj|v_proj)$",
        "--seeds",
        "0,1",
        "--reference",
        "full",
        "--output_dir",
        str(out),
    ]
    kadapt([*common, "--full_lr", "1e-5,1e-3"])
    data = json.loads((out / "intrinsic_dim.json").read_text())
    assert sorted(calls) == sorted([("subspace", d) for d in (0, 10, 100)] * 2 + [("full", 1e-5), ("full", 1e-3)] * 2)
    qv = data["summary"]["qv"]
    assert (qv["reference_learning_rate"], qv["reference_validation_accuracy"], qv["d90"]) == (1e-5, 0.7, 10)
    assert "| reference learning rate (chosen on validation) | 1e-05 |" in (out / "intrinsic_dim.md").read_text()

    calls.clear()  # a new learning rate trains only its own runs; the rest come from runs.jsonl
    kadapt([*common, "--full_lr", "1e-5,1e-4,1e-3"])
    data = json.loads((out / "intrinsic_dim.json").read_text())
    assert sorted(calls) == [("full", 1e-4), ("full", 1e-4)]
    qv = data["summary"]["qv"]
    assert (qv["reference_learning_rate"], qv["reference_validation_accuracy"], qv["d90"]) == (1e-4, 1.0, 100)
    assert qv["d90_per_seed"] == [100, 100] and len(data["reference_runs"]) == 6

    (out / "runs.jsonl").unlink()  # a finished sweep's intrinsic_dim.json is reused too
    calls.clear()
    kadapt([*common, "--full_lr", "1e-4"])
    assert calls == []
    kadapt([*common, "--full_lr", "1e-4", "--steps", "7"])  # other settings: nothing is reused
    assert sorted(calls) == sorted([("subspace", d) for d in (0, 10, 100)] * 2 + [("full", 1e-4)] * 2)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--group", "qv", r"--group 'qv': expected NAME=REGEX"),
        ("--group", "qv=(", r"--group 'qv=\(': '\(' is not a valid regular expression"),
        ("--dims", "0,ten", r"--dims '0,ten': expected comma-separated integers \(subspace sizes d"),
        ("--dims", "-5,10", r"--dims '-5,10': every value must be 0 or more \(subspace sizes d; 0 trains the head"),
        ("--full_lr", "1e-4,fast", r"--full_lr '1e-4,fast': expected comma-separated numbers \(learning rates"),
        ("--full_lr", "1e-4,0", r"--full_lr '1e-4,0': every value must be above 0 \(learning rates"),
        ("--lr", "0", r"--lr 0.0: expected a learning rate above 0"),
        ("--lr_ref_d", "0", r"--lr_ref_d 0: expected 1 or more"),
    ],
)
def test_argument_errors_name_the_flag(tiny_backbone, tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        kadapt(
            [
                "intrinsic-dim",
                "--model_name_or_path",
                tiny_backbone,
                "--dataset_name",
                "digits",
                f"{flag}={value}",
                "--output_dir",
                str(tmp_path),
            ]
        )
