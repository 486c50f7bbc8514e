"""benchmarks/frontier.py chooses budget-matched variants (peers included when named) and times them."""

import importlib.util
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
