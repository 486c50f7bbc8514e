"""KAdaptation under FSDP2 and FSDP1 with one unit per ViT block: 2 CPU processes over gloo (tests/sharded_training.py).

Each sharded run must equal the one-process reference (losses and trained adapter weights), leave both ranks with the
same adapter, and gather fewer parameter elements at a time than a root-only wrap does.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("sharded_training.py")


def run(engine: str, targets: str, out: Path, method: str = "kadaptation") -> list[dict]:
    args = [str(SCRIPT), "--engine", engine, "--targets", targets, "--method", method, "--out", str(out)]
    if engine == "none":
        command = [sys.executable, *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(1 if engine == "none" else 2)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return {t: run("none", t, tmp_path_factory.mktemp(f"ref_{t}"))[0] for t in ("qv", "all")}


@pytest.mark.parametrize("targets", ["qv", "all"])
@pytest.mark.parametrize("engine", ["fsdp2", "fsdp1"])
def test_per_block_sharding_equals_one_process(engine, targets, reference, tmp_path):
    ranks = run(engine, targets, tmp_path / engine)
    ref = reference[targets]
    assert ranks[0]["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    assert set(ranks[0]["adapter"]) == set(ref["adapter"])  # every tensor saved, the slow weights once
    for key, expected in ref["adapter"].items():
        torch.testing.assert_close(ranks[0]["adapter"][key], expected, atol=1e-5, rtol=1e-5, msg=key)
        torch.testing.assert_close(ranks[1]["adapter"][key], ranks[0]["adapter"][key], atol=0, rtol=0, msg=key)
    assert any(".kadapt_A." in k for k in ref["adapter"])
    root_only = run(f"{engine}_root", targets, tmp_path / f"{engine}_root")
    assert ranks[0]["peak"] < root_only[0]["peak"], (ranks[0]["peak"], root_only[0]["peak"])
