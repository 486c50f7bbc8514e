"""benchmarks/frontier.py chooses budget-matched variants (peers included when named) and times them."""

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from peft_kadapt.training import DINOV2_SMALL_ALIAS, HEAD, build_model, parse_variant, pos_encoding_kwargs, with_alpha
from peft_kadapt.training.bench.protocol import RunRecord, default_grid, edge_neighbours
from peft_kadapt.training.methods import PEERS


BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # frontier.py imports its folder's tables.py, as it does when run as a script
spec = importlib.util.spec_from_file_location("frontier", BENCHMARKS / "frontier.py")
frontier = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frontier)


def test_speed_table_of_the_budget_variants_against_lora_r8(tiny_backbone, capsys):
    frontier.main(
        ["--model_name_or_path", tiny_backbone, "--budgets", "3000", "--only", "lora,ia3", "--speed", "1"]
        + ["--speed_resolution", "32"]
    )
    out = capsys.readouterr().out
    assert "Training step against lora r=8 targets=q_proj+v_proj (32 px, batch 16, 1 rounds" in out
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    cells = rows["lora r=8 targets=q_proj+v_proj"].split(" | ")
    assert cells[2] == "1.00" and cells[4] == "1.00 |"  # the reference against itself
    assert any(v.startswith("ia3 ") for v in rows) and any(v.startswith("lora r=") and "r=8" not in v for v in rows)


def test_the_peers_run_in_a_pass_of_their_own_with_their_head_rate(tiny_backbone, monkeypatch):
    passes = []
    monkeypatch.setattr(frontier.bench, "main", passes.append)
    frontier.main(["--model_name_or_path", tiny_backbone, "--budgets", "3000", "--only", "lora,ia3,linear"])
    own, peers = passes
    methods = [argv[argv.index("--methods") + 1].split(",") for argv in passes]
    assert methods[0] and all(v.split()[0] in ("lora", "linear") for v in methods[0])
    assert methods[1] and all(v.split()[0] == "ia3" for v in methods[1])
    assert "--head_lr" not in own and "linear=1e-3,3e-3,1e-2" in own
    assert peers[peers.index("--head_lr") + 1] == frontier.PEER_HEAD_LR
    assert not {"--grid", "--alphas", "--adapter_lrs"} & set(peers)  # the peers search their own grids


def test_a_peer_whose_sizes_tie_in_count_takes_the_more_expressive(tiny_backbone):
    # TinyLoRA's count is u per layer whatever r: r = 4 (a 4 × 4 core) beats r = 1 (a scalar) at the same count
    variants = frontier.peer_variants([10**6], tiny_backbone, ["a", "b"], ["tinylora"])
    assert sorted(v.split(" targets=")[0] for v in variants) == ["tinylora r=4 u=256"] * 2


def test_fourierft_variants_start_from_a_zero_spectrum_not_from_its_gaussian_default(tiny_backbone):
    x = torch.randn(2, 3, 32, 32)

    def moves_the_base(variant: str) -> bool:  # whether the adapter changes the model's output before any training
        model, _ = build_model(parse_variant(variant, model_name_or_path=tiny_backbone), ["a", "b"])
        model.eval()
        with torch.no_grad():
            adapted = model(pixel_values=x).logits
            with model.disable_adapter():
                return not torch.equal(adapted, model(pixel_values=x).logits)

    variants = frontier.peer_variants([10**6], tiny_backbone, ["a", "b"], ["fourierft"])
    assert len(variants) == 2  # on q/v and on all linear layers
    for variant in variants:
        assert not moves_the_base(variant) and moves_the_base(variant.replace(" init_weights=True", "")), variant


def test_the_queue_shares_the_splits_between_workers_seed_major(tmp_path):
    fake = tmp_path / "python"  # records each split it is asked to run instead of training
    fake.write_text('#!/bin/sh\necho "$*" >> "$LOGS/calls"\n')
    fake.chmod(0o755)
    script = Path(__file__).parents[1] / "benchmarks" / "frontier_queue.sh"
    env = {**os.environ, "PYTHON": str(fake), "SEEDS": "0 1", "LOGS": str(tmp_path)}
    for worker in ("0", "1"):
        subprocess.run(["bash", str(script), worker, "2", "kadaptation"], env=env, check=True)
    lists, calls = split_calls(tmp_path / "calls")
    assert len(lists) == 2 and all(c[c.index("--only") + 1] == "kadaptation" for c in lists)  # one per worker
    splits = [(c[c.index("--datasets") + 1], c[c.index("--shots") + 1], c[c.index("--seeds") + 1]) for c in calls]
    first, second = splits[:8], splits[8:]  # worker 0's, then worker 1's
    design = [(d, str(k), str(s)) for d, k, s in frontier.design_splits((0, 1))]  # what --progress counts
    assert sorted(first + second) == sorted(design)
    assert first == [split for split in design if split in first]  # in the design's order: seed-major
    assert [s for _, _, s in first] == ["0"] * 4 + ["1"] * 4
    for worker in (first, second):  # each takes both k and one textiles split of every seed
        assert sorted(k for _, k, s in worker if s == "0") == ["20", "20", "5", "5"]
        assert sum(d == "textiles" for d, _, s in worker if s == "0") == 1
    assert all(c[c.index("--only") + 1] == "kadaptation" and c[c.index("--extend_edges") + 1] == "3" for c in calls)
    # every split reads the variants its worker listed once
    assert {c[c.index("--variants_file") + 1] for c in calls} == {
        str(tmp_path / f"frontier_variants_{w}.txt") for w in "01"
    }


def split_calls(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """The fake python's calls: (those that list the variants, those that run a split)."""
    calls = [line.split() for line in path.read_text().splitlines()]
    return [c for c in calls if "--names" in c], [c for c in calls if "--datasets" in c]


def test_variants_listed_once_run_as_the_variants_computed_per_split(tiny_backbone, monkeypatch, capsys, tmp_path):
    argv = ["--model_name_or_path", tiny_backbone, "--budgets", "3000,20000", "--only", "lora,kadaptation,ia3,linear"]
    frontier.main([*argv, "--list", "--names"])
    listed = capsys.readouterr().out
    assert listed.count("\n") >= 4 and all(
        v.split()[0] in ("lora", "kadaptation", "ia3") for v in listed.split("\n")[:-1]
    )
    (tmp_path / "variants.txt").write_text(listed)
    passes = []
    monkeypatch.setattr(frontier.bench, "main", passes.append)
    frontier.main(argv)
    computed = passes[:]
    passes.clear()
    frontier.main([*argv, "--variants_file", str(tmp_path / "variants.txt")])
    assert passes == computed and len(computed) == 2  # the same bench passes: own variants and probe, then the peer
    passes.clear()
    without_ia3 = "\n".join(v for v in listed.splitlines() if not v.startswith("ia3 "))
    (tmp_path / "variants.txt").write_text(without_ia3)  # what the file names is what runs
    frontier.main([*argv, "--variants_file", str(tmp_path / "variants.txt")])
    assert passes == computed[:1]
    (tmp_path / "variants.txt").write_text("\n")
    with pytest.raises(SystemExit):
        frontier.main([*argv, "--variants_file", str(tmp_path / "variants.txt")])
    assert "names no variant (write it with --list --names)" in capsys.readouterr().err


def test_a_failed_split_is_named_and_the_queue_goes_on(tmp_path):
    fake = tmp_path / "python"  # fails on textiles only
    fake.write_text('#!/bin/sh\necho "$*" >> "$LOGS/calls"\ncase "$*" in *textiles*) exit 3;; esac\n')
    fake.chmod(0o755)
    script = Path(__file__).parents[1] / "benchmarks" / "frontier_queue.sh"
    env = {**os.environ, "PYTHON": str(fake), "SEEDS": "0", "LOGS": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "0", "1", "vera"], env=env, capture_output=True, text=True)
    assert len(split_calls(tmp_path / "calls")[1]) == 8  # every split was tried
    assert done.returncode == 1
    assert "2 split(s) failed" in done.stderr and "textiles k=5 seed=0;textiles k=20 seed=0" in done.stderr
    assert "frontier_queue: textiles k=20 seed=0 failed" in (tmp_path / "frontier_queue_0.log").read_text()


def test_progress_counts_the_design_splits_and_estimates_the_hours_left(tmp_path, capsys):
    lora, ia3 = "lora r=1 targets=q_proj+v_proj", "ia3 targets=q_proj+v_proj"

    def run(variant, dataset, k, seed, seconds):
        return RunRecord(dataset=dataset, shots=k, seed=seed, variant=variant, method=variant.split()[0], settings={},
                         grid=[], chosen_lr=1e-3, chosen_alpha=None, validation_accuracy=0.5, test_accuracy=0.5,
                         test_images=10, trainable_parameters=1, adapter_parameters=1, saved_bytes=1,
                         train_seconds=1.0, wall_seconds=seconds)  # fmt: skip

    records = [run(lora, "mnist5k", 5, 0, 3600.0), run(ia3, "mnist5k", 5, 0, 1800.0), run(lora, "digits", 20, 1, 7200)]
    records.append(run(lora, "mnist5k", "full (100/class)", 0, 1.0))  # not a split of the design
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    frontier.print_progress([lora, ia3], str(tmp_path / "r.jsonl"))
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 0-2") or line.startswith("| 3-4")]
    # seeds 0-2: 24 splits, 48 runs; 3 recorded (3.5 h); left: mnist5k 5 more lora and ia3 runs (1 h, 0.5 h each),
    # digits 5 more lora (2 h each) and 6 ia3, scaled from mnist5k by lora's cost there (2 x: 1 h each); both on the
    # other datasets have no record of any variant to scale from: not counted
    assert rows[0] == "| 0-2 | 1 of 24 | 2 | 3 of 48 | 3.5 | 23.5 |"
    # seeds 3-4: 4 splits each of mnist5k (6 h) and digits (12 h)
    assert rows[1] == "| 3-4 | 0 of 16 | 0 | 0 of 32 | 0.0 | 18.0 |"
    assert "10 missing runs have no record of their method on their dataset: estimated from another" in out
    assert "40 missing runs have no record of their method anywhere" in out


@pytest.mark.slow
def test_every_peer_variant_of_the_study_trains_a_step_at_the_edges_of_its_scale_grid():
    # what the study's edge extension (frontier_queue.sh: 3 rounds) can ask of each peer on the real ViT-S: LoHa at
    # alpha 0.25 (a fraction in a field PEFT hints as int) once killed a split mid-way
    labels = [str(i) for i in range(10)]
    variants = frontier.peer_variants(list(frontier.tables.BUDGETS), DINOV2_SMALL_ALIAS, labels, list(PEERS))
    assert {v.split()[0] for v in variants} == set(PEERS)
    for variant in variants:
        reach = default_grid(variant)
        for _ in range(3):  # every point a round can add, from every edge of what the rounds before reached
            reach += [c for point in reach for c in edge_neighbours(point, reach)]
        for alpha in {c.alpha for c in reach}:
            spec = parse_variant(variant, model_name_or_path=DINOV2_SMALL_ALIAS)
            model, _ = build_model(spec if alpha is None else with_alpha(spec, alpha), labels)
            logits = model(pixel_values=torch.randn(1, 3, 56, 56), **pos_encoding_kwargs(model, 56)).logits
            logits.logsumexp(-1).sum().backward()
            grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and f"{HEAD}." not in n]
            assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), (variant, alpha)
