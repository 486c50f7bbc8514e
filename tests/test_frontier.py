"""benchmarks/frontier.py chooses budget-matched variants (peers included when named) and times them."""

import importlib.util
import os
import subprocess
from pathlib import Path


spec = importlib.util.spec_from_file_location("frontier", Path(__file__).parents[1] / "benchmarks" / "frontier.py")
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


def test_the_queue_shares_the_splits_between_workers_seed_major(tmp_path):
    fake = tmp_path / "python"  # records each split it is asked to run instead of training
    fake.write_text('#!/bin/sh\necho "$*" >> "$LOGS/calls"\n')
    fake.chmod(0o755)
    script = Path(__file__).parents[1] / "benchmarks" / "frontier_queue.sh"
    env = {**os.environ, "PYTHON": str(fake), "SEEDS": "0 1", "LOGS": str(tmp_path)}
    for worker in ("0", "1"):
        subprocess.run(["bash", str(script), worker, "2", "kadaptation"], env=env, check=True)
    calls = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    splits = [(c[c.index("--datasets") + 1], c[c.index("--shots") + 1], c[c.index("--seeds") + 1]) for c in calls]
    first, second = splits[:8], splits[8:]  # worker 0's, then worker 1's
    assert all(k == "5" for _, k, _ in first) and all(k == "20" for _, k, _ in second)
    datasets = ("mnist5k", "textiles", "fashion_mnist", "digits")
    assert sorted(first + second) == sorted((d, k, s) for d in datasets for k in ("5", "20") for s in ("0", "1"))
    assert [s for _, _, s in first] == ["0"] * 4 + ["1"] * 4  # seed-major
    assert all(c[c.index("--only") + 1] == "kadaptation" and "--extend_edges" in c for c in calls)


def test_a_failed_split_is_named_and_the_queue_goes_on(tmp_path):
    fake = tmp_path / "python"  # fails on textiles only
    fake.write_text('#!/bin/sh\necho "$*" >> "$LOGS/calls"\ncase "$*" in *textiles*) exit 3;; esac\n')
    fake.chmod(0o755)
    script = Path(__file__).parents[1] / "benchmarks" / "frontier_queue.sh"
    env = {**os.environ, "PYTHON": str(fake), "SEEDS": "0", "LOGS": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "0", "1", "vera"], env=env, capture_output=True, text=True)
    assert len((tmp_path / "calls").read_text().splitlines()) == 8  # every split was tried
    assert done.returncode == 1
    assert "2 split(s) failed" in done.stderr and "textiles k=5 seed=0;textiles k=20 seed=0" in done.stderr
    assert "frontier_queue: textiles k=20 seed=0 failed" in (tmp_path / "frontier_queue_0.log").read_text()
