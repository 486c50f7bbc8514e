"""benchmarks/gpu_suite.sh, the frontier study's GPU profile, runs end to end with its tiny CPU profile."""

import os
import subprocess
from pathlib import Path

import pytest

from peft_kadapt.training.bench.protocol import read_records


ROOT = Path(__file__).parents[1]


def suite(tiny_backbone, out, limit="300"):
    env = {**os.environ, "PROFILE": "tiny", "OUT": str(out), "TINY_BACKBONE": tiny_backbone, "LIMIT": limit}
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_gpu_suite_tiny_profile_records_tables_and_resumes(tiny_backbone, tmp_path):
    done = suite(tiny_backbone, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    records = read_records(tmp_path / "frontier_gpu.jsonl")
    assert {r.seed for r in records} == {0} and all(r.settings["bf16"] for r in records)
    assert all(r.settings["extend_edges"] == 1 and r.settings["resolution"] == 32 for r in records)
    assert {r.method for r in records} >= {"kadaptation", "lora", "lokr", "linear", "bitfit", "full"}
    full = next(r for r in records if r.method == "full")  # the study keeps its own reference grids
    assert [g["learning_rate"] for g in full.grid if not g.get("extension")] == [1e-5, 3e-5, 1e-4]
    table = (tmp_path / "frontier_gpu.md").read_text()
    assert "Targets:" in table and "| budget | KAdaptation variant | against |" in table
    assert (tmp_path / "frontier_gpu.png").stat().st_size > 1000
    again = suite(tiny_backbone, tmp_path)  # everything recorded: resumes without a new record
    assert again.returncode == 0 and len(read_records(tmp_path / "frontier_gpu.jsonl")) == len(records)


@pytest.mark.slow
def test_gpu_suite_stops_at_its_time_limit(tiny_backbone, tmp_path):
    done = suite(tiny_backbone, tmp_path, limit="4")  # stopped while still loading
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "study stopped at 4s" in (tmp_path / "machine.txt").read_text()
    assert "no run finished within 4s: nothing to tabulate" in done.stdout
