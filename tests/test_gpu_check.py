"""benchmarks/gpu_check.sh, the prepared GPU check, runs end to end with its tiny CPU profile."""

import json
import os
import subprocess
from pathlib import Path

import pytest


ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_tiny_profile(tiny_backbone, tmp_path):
    env = {**os.environ, "PROFILE": "tiny", "OUT": str(tmp_path), "TINY_BACKBONE": tiny_backbone}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    speed = (tmp_path / "speed.md").read_text()
    assert "| KAdaptation (defaults: n=8, r=1) |" in speed and "max |logit difference| merged vs unmerged" in speed
    assert "| 32 | 4 |" in (tmp_path / "sweep.md").read_text()
    results = json.loads((tmp_path / "accelerate_results.json").read_text())
    assert results["steps"] == 2 and results["num_processes"] == 1 and results["eval_examples"] == 100
    scaleout = (tmp_path / "scaleout.md").read_text()
    assert "| fsdp2, " in scaleout and "agree: True" in scaleout and "| qlora" in scaleout
