"""benchmarks/tables.py recomputes the published tables from records: checked on a small fixture of records."""

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from peft_kadapt.training.bench.protocol import RunRecord


spec = importlib.util.spec_from_file_location("tables", Path(__file__).parents[1] / "benchmarks" / "tables.py")
tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables)
sys.modules["tables"] = tables  # docs_tables imports it by name, as when run from its folder
spec = importlib.util.spec_from_file_location(
    "docs_tables", Path(__file__).parents[1] / "benchmarks" / "docs_tables.py"
)
docs_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_tables)


def record(variant, seed, test, adapter, grid=()):
    return RunRecord(dataset="d", shots=5, seed=seed, variant=variant, method=variant.split()[0],
                     settings={"model_name_or_path": "m", "resolution": 56}, grid=list(grid), chosen_lr=1e-3, chosen_alpha=None,
                     validation_accuracy=0.5, test_accuracy=test, test_images=100, trainable_parameters=adapter + 10,
                     adapter_parameters=adapter, saved_bytes=4, train_seconds=1.0, wall_seconds=1.0)  # fmt: skip


def test_frontier_and_map_from_records(tmp_path, capsys):
    qv = "targets=q_proj+v_proj"
    records = [record(f"lora r=1 {qv}", s, t, 18_432) for s, t in ((0, 0.50), (1, 0.60))]
    records += [record(f"kadaptation n=8 r=1 {qv}", s, t, 19_456) for s, t in ((0, 0.55), (1, 0.63))]
    records += [record("lora r=1 targets=q_proj+k_proj+v_proj+o_proj+fc1+fc2", 0, 0.7, 82_944)]
    records += [record("linear", s, 0.4, 0) for s in (0, 1)]
    records += [record("bitfit", 0, 0.45, 19_000)]  # a reference, though its biases would fit the ~20k class
    grid = [{"learning_rate": lr, "alpha": a, "validation_accuracy": v, "validation_loss": 1.0}
            for (a, lr, v) in ((1, 1e-3, 0.2), (1, 1e-2, 0.4), (4, 1e-3, 0.6), (4, 1e-2, 0.1))]  # fmt: skip
    records += [record(f"lora r=8 {qv}", s, 0.8, 147_456, grid) for s in (0, 1)]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))

    tables.main([str(path), "--all_splits"])
    out = capsys.readouterr().out
    # KAdaptation against the ~20k class's LoRA, paired over two seeds: +0.05 and +0.03 -> +0.040 ± 12.706·0.01414/√2
    row = next(line for line in out.splitlines() if line.startswith("| ~20k") and "kadaptation" in line)
    assert "| 19,456 | 0.590 ± 0.508 | 2 | +0.040 ± 0.127 (lora r=1 targets=q_proj+v_proj) |" in row
    assert "| ~80k | d | 56 | 5 | lora r=1 targets=q_proj+k_proj+v_proj+o_proj+fc1+fc2 | 82,944 |" in out
    assert "| reference | d | 56 | 5 | linear | 0 | 0.400 ± 0.000 | 2 | - |" in out
    assert "| reference | d | 56 | 5 | bitfit | 19,000 | 0.450 (one split) | 1 | - |" in out
    assert "| ~150k | d | 56 | 5 | lora r=8 targets=q_proj+v_proj | 147,456 | 0.800 ± 0.000 | 2 | - |" in out

    tables.main([str(path), "--map", "--all_splits"])
    out = capsys.readouterr().out
    assert (
        "| alpha \\ lr | 0.001 | 0.01 |" in out and "| 1 | 0.200 | 0.400 |" in out and "| 4 | 0.600 | 0.100 |" in out
    )


def test_map_averages_the_complete_splits_only(tmp_path, capsys):
    def grid(v):
        return [{"learning_rate": 1e-3, "alpha": 4.0, "validation_accuracy": v, "validation_loss": 1.0}]

    records = [record("lora r=8", s, 0.5, 147_456, grid(v)) for s, v in ((0, 0.2), (1, 0.6))]
    records += [record("kadaptation n=8", 0, 0.5, 19_456, grid(0.3))]  # seed 1 has no KAdaptation record yet
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    tables.main([str(path), "--map"])
    out = capsys.readouterr().out
    assert "1 of 2 splits have a record for every variant" in out
    assert "lora r=8 (validation accuracy, mean over 1 split(s)" in out and "| 4 | 0.200 |" in out
    tables.main([str(path), "--map", "--all_splits"])
    assert "| 4 | 0.400 |" in capsys.readouterr().out  # lora r=8 over both seeds


def test_verdict_uses_complete_splits_and_topped_up_records(tmp_path, capsys):
    qv = "targets=q_proj+v_proj"
    records = [record(f"lora r=1 {qv}", s, t, 18_432) for s, t in ((0, 0.50), (1, 0.60), (2, 0.55))]
    records += [
        record(f"kadaptation n=8 r=1 parametrization=lora_matched {qv}", s, t, 19_456)
        for s, t in ((0, 0.55), (1, 0.63))
    ]
    records += [record(f"lora r=8 {qv}", s, t, 147_456) for s, t in ((0, 0.54), (1, 0.64))]
    records += [record("linear", s, 0.61, 0) for s in (0, 1)]
    extended = record(
        f"kadaptation n=8 r=1 parametrization=lora_matched {qv}", 0, 0.58, 19_456
    )  # seed 0 topped up by one extension round
    extended.settings = {**extended.settings, "extend_edges": 1}
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in [*records, extended]))

    tables.main([str(path), "--verdict", "--plot", str(tmp_path / "frontier.png")])
    out = capsys.readouterr().out
    assert "2 of 3 splits have a record for every variant" in out  # seed 2 has LoRA r=1 only
    # topped-up seed 0 (0.58) replaces 0.55: differences +0.08, +0.03 against LoRA r=1
    row = f"| ~20k | kadaptation n=8 r=1 parametrization=lora_matched {qv} | lora r=1 {qv} | pooled | 2 | +0.055 ± 0.318 | 2 / 0 / 0 |"
    assert row in out
    assert "(lower end -0.263)" in out and "not met" in out
    assert (
        f"kadaptation n=8 r=1 parametrization=lora_matched {qv} (≤ ¼ of lora r=8 {qv}'s adapter parameters) reaches its accuracy"
        in out
    )
    assert "met (+0.015 ± 0.318 over 2 splits)" in out  # +0.04, -0.01 against LoRA r=8
    assert (
        f"not met (kadaptation n=8 r=1 parametrization=lora_matched {qv} on d k=5)" in out
    )  # 0.605 is not above the linear probe's 0.61
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    assert "| linear | 2 | (-, 0.001): 2 | 0 |" in out  # chosen settings: one lr, nothing on an edge


def test_verdict_checks_the_targets_on_each_k_alone_too(tmp_path, capsys):
    qv = "targets=q_proj+v_proj"
    records = []
    for k, gains in ((5, (0.10, 0.11, 0.12)), (20, (-0.02, -0.03, -0.04))):
        for seed, gain in enumerate(gains):
            records += [
                record(f"lora r=1 {qv}", seed, 0.5, 18_432),
                record(f"kadaptation n=8 r=1 {qv}", seed, 0.5 + gain, 19_456),
            ]
            records[-2].shots = records[-1].shots = k
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    tables.main([str(path), "--verdict"])
    out = capsys.readouterr().out
    pooled, _, per_k = out.partition("The same targets on each k's splits alone:")
    assert "not met (lower end -0.041)" in pooled  # six differences, mean +0.040: the k = 20 losses pull it under 0
    k5, _, k20 = per_k.partition("- k = 20:")
    assert "- k = 5:" in k5 and "met (lower end +0.085)" in k5 and "not met" not in k5  # +0.11 ± 0.025
    assert "not met (lower end -0.055)" in k20  # -0.03 ± 0.025

    tables.main([str(path), "--verdict", "--shots", "5"])
    assert "each k's splits alone" not in capsys.readouterr().out  # one k: the targets above are already its own


def test_verdict_says_a_single_split_has_no_interval(tmp_path, capsys):
    qv = "targets=q_proj+v_proj"
    records = [record(f"lora r=1 {qv}", 0, 0.5, 18_432), record(f"kadaptation n=8 r=1 {qv}", 0, 0.6, 19_456)]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    tables.main([str(path), "--verdict"])
    out = capsys.readouterr().out
    assert (
        f"≥ lora r=1 {qv} (pooled paired 95 % CI excludes a loss: lower end ≥ 0): not met (one split: no interval)."
        in out
    )
    assert "nan" not in out


def test_verdict_checks_all_linear_kadaptation_against_its_q_v_variants_and_lora_r1():
    al, qv, lm = "targets=q_proj+k_proj+v_proj+o_proj+fc1+fc2", "targets=q_proj+v_proj", "parametrization=lora_matched"
    records = []
    for seed, base in enumerate((0.50, 0.60)):
        records += [
            record(f"kadaptation n=8 r=1 {lm} {al}", seed, base, 86_016),
            record(f"kadaptation n=8 r=1 {lm} {qv}", seed, base + 0.004, 19_456),  # AL trails by 0.4 point: met
            record(f"kadaptation n=16 r=2 {lm} {qv}", seed, base + 0.02, 45_056),  # the largest within 86k: 2 points
            record(f"kadaptation n=32 r=4 {lm} {qv}", seed, base + 0.10, 90_000),  # more parameters: not compared
            record(f"kadaptation n=8 r=1 {al}", seed, base, 86_016),  # legacy: compared with legacy only (none here)
            record(f"lora r=1 {al}", seed, base - 0.01, 82_944),
        ]
    lines = tables.all_linear_targets(records)
    assert len(lines) == 4, lines
    legacy_lora, same, largest, lora = lines  # sorted by variant: the legacy one is named parametrization=legacy
    assert f"n=8 r=1 {lm} {al} against kadaptation n=8 r=1 {lm} {qv}" in same and ": met (-0.004" in same
    assert f"against kadaptation n=16 r=2 {lm} {qv}" in largest and ": not met (-0.020" in largest
    assert "0 / 0 / 2)" in largest  # wins / ties / losses over the two splits
    assert f"n=8 r=1 {lm} {al} against lora r=1 {al}" in lora and ": met (+0.010" in lora
    assert f"n=8 r=1 parametrization=legacy {al} against lora r=1 {al}" in legacy_lora


def test_field_pits_kadaptations_validation_best_against_every_adapter_of_its_class():
    qv = "targets=q_proj+v_proj"
    records = []
    for seed, base in enumerate((0.50, 0.60, 0.55)):
        records += [
            record(f"kadaptation n=8 r=1 {qv}", seed, base + 0.05, 19_456),  # best on validation (below)
            record(f"kadaptation n=12 r=1 {qv}", seed, base + 0.20, 21_888),  # best on test: must not be chosen
            record(f"lora r=1 {qv}", seed, base + (0.01, -0.01, 0.0)[seed], 18_432),  # behind by 4-6 points
            record(f"vera r=256 {qv}", seed, base, 10_752),  # behind by 5 points on every split
            record(f"fourierft n_frequency=500 {qv}", seed, base + 0.10, 12_000),  # ahead of KAdaptation
            record(f"lokr r=16 {qv}", seed, base + 0.05 + (0.02, -0.02, 0.0)[seed], 19_968),  # tied
            record("linear", seed, 0.9, 0),  # a reference: in no class
        ]
        records[-7].validation_accuracy, records[-6].validation_accuracy = 0.8, 0.7
    out = tables.field_markdown(tables.field(records))
    best = "kadaptation n=8 r=1 parametrization=legacy targets=q_proj+v_proj"
    assert f"| ~20k | {best} | vera r=256 targets=q_proj+v_proj | 3 | +0.050 ± 0.000 | 3 / 0 / 0 | ahead |" in out
    assert "| fourierft n_frequency=500 targets=q_proj+v_proj | 3 | -0.050 ± 0.000 | 0 / 0 / 3 | behind |" in out
    assert "| lora r=1 targets=q_proj+v_proj | 3 | +0.050 ± 0.025 | 3 / 0 / 0 | ahead |" in out  # 0.04, 0.06, 0.05
    assert not any(line.startswith("| ~20k | kadaptation n=12") for line in out.splitlines())  # KAdaptation column
    assert "| lokr r=16 targets=q_proj+v_proj | 3 | +0.000 ± 0.050 | 1 / 1 / 1 | tied |" in out
    assert "is ahead of 2, tied with 1 and behind 1 of the class's other adapters (behind: fourierft" in out
    assert "highest mean test accuracy in the class: kadaptation n=12 r=1 parametrization=legacy" in out
    assert "linear" not in out
    verdict = tables.verdict_markdown(records)  # the ~20k target: ahead of every other adapter of the class
    short = "fourierft n_frequency=500 targets=q_proj+v_proj; lokr r=16 targets=q_proj+v_proj"
    assert f"{best} (KAdaptation's best on validation) ahead of every other adapter of the class (4; " in verdict
    assert f"each pooled paired 95 % CI excludes a loss): not met (not ahead of: {short})." in verdict


def test_field_says_where_each_adapter_wins_dataset_by_dataset():
    qv = "targets=q_proj+v_proj"
    records = []
    for seed in range(3):
        for dataset, ahead in (("a", 0.1), ("b", -0.1)):  # VeRA wins on b only
            records += [
                record(f"kadaptation n=8 r=1 {qv}", seed, 0.6, 19_456),
                record(f"vera r=256 {qv}", seed, 0.6 - ahead, 10_752),
            ]
            records[-2].dataset = records[-1].dataset = dataset
    out = tables.field_markdown(tables.field(records))
    best, vera = "kadaptation n=8 r=1 parametrization=legacy targets=q_proj+v_proj", "vera r=256 targets=q_proj+v_proj"
    assert f"| ~20k | {best} | {vera} | 6 | +0.000 ± 0.115 | 3 / 0 / 3 | tied |" in out  # pooled: a tie
    assert f"| ~20k | a | 1 | 0 | 0 | - | {best} (0.600) |" in out
    assert f"| ~20k | b | 0 | 0 | 1 | {vera} | {vera} (0.700) |" in out


def test_exclude_leaves_variants_out_and_says_when_nothing_is_left(tmp_path, capsys):
    qv = "targets=q_proj+v_proj"
    records = [record(f"kadaptation n=8 r=1 {qv}", s, 0.6, 19_456) for s in (0, 1)]
    records += [record(f"kadaptation n=8 r=1 parametrization=lora_matched {qv}", s, 0.7, 19_456) for s in (0, 1)]
    records += [record(f"lora r=1 {qv}", s, 0.5, 18_432) for s in (0, 1)]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    tables.main([str(path), "--verdict", "--exclude", "parametrization=legacy"])
    out = capsys.readouterr().out
    assert "lora_matched" in out and "parametrization=legacy" not in out
    with pytest.raises(SystemExit, match="--exclude .*no record is left"):
        tables.main([str(path), "--exclude", "targets="])


def test_exclude_matches_whole_words_so_a_method_name_spares_the_peers_that_contain_it(tmp_path, capsys):
    qv = "targets=q_proj+v_proj"
    names = [
        "lora r=1",
        "vblora r=2 num_vectors=128 vector_length=128",
        "tinylora r=4 u=256",
        "vera r=512",
        "pvera r=256",
    ]
    records = [record(f"{name} {qv}", s, 0.5, 20_000) for name in names for s in (0, 1)]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    tables.main([str(path), "--exclude", "lora", "--exclude", "vera"])
    rows = {line.split(" | ")[3] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert {name.split()[0] for name in names if f"{name} {qv}" in rows} == {"vblora", "tinylora", "pvera"}


def test_chosen_point_on_the_grid_edge():
    grid = [{"learning_rate": lr, "alpha": a, "validation_accuracy": 0.5, "validation_loss": 1.0}
            for a in (1.0, 4.0) for lr in (1e-3, 3e-3, 1e-2)]  # fmt: skip
    edge, inside = record("lora r=1", 0, 0.5, 1, grid), record("lora r=1", 0, 0.5, 1, grid)
    edge.chosen_lr, edge.chosen_alpha = 3e-3, 4.0  # the largest alpha
    inside.chosen_lr, inside.chosen_alpha = 3e-3, 1.0  # lowest alpha too: 2 alphas are both edges
    assert tables.at_grid_edge(edge) and tables.at_grid_edge(inside)
    grid += [
        {"learning_rate": 3e-3, "alpha": 0.25, "validation_accuracy": 0.1, "validation_loss": 9.0, "extension": True}
    ]
    inside.grid = grid
    assert not tables.at_grid_edge(inside)


def test_label_names_variants_by_a_setting_so_they_can_be_paired(tmp_path, capsys):
    plain = [record("lora r=8", s, t, 147_456) for s, t in ((0, 0.50), (1, 0.60))]
    warm = [record("lora r=8", s, t, 147_456) for s, t in ((0, 0.52), (1, 0.61))]
    for r in warm:
        r.settings = {**r.settings, "warmup_steps": 10}
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in [*plain, *warm]))
    tables.main([str(path), "--label", "warmup_steps", "--reference", "lora r=8 [warmup_steps=0]"])
    out = capsys.readouterr().out
    assert "| pooled | lora r=8 [warmup_steps=10] | 2 | 0.015 ± 0.064 | 2 / 0 / 0 |" in out


def test_the_tables_in_the_docs_are_what_the_committed_records_give():
    """Every block of docs/results.md between `<!-- tables: ARGS -->` and `<!-- /tables -->` is the output of
    `python benchmarks/tables.py ARGS` on the committed records (ARGS name files relative to the repository)."""
    docs = Path(__file__).parents[1] / "docs" / "results.md"
    assert docs_tables.blocks(docs.read_text()), "docs/results.md has no generated table block"
    assert docs_tables.main([str(docs), "--check"]) == 0, "a docs block differs from its records (see above)"


def test_docs_tables_rewrites_a_stale_block_and_check_names_it(tmp_path, capsys):
    path = tmp_path / "records.jsonl"
    path.write_text(
        "".join(json.dumps(asdict(record("lora r=8", s, t, 147_456))) + "\n" for s, t in ((0, 0.5), (1, 0.7)))
    )
    page = tmp_path / "page.md"
    page.write_text(f"intro\n<!-- tables: {path} --shots 5 -->\nold numbers\n<!-- /tables -->\noutro\n")
    assert docs_tables.main([str(page), "--check"]) == 1
    assert f"differs: <!-- tables: {path} --shots 5 -->" in capsys.readouterr().out
    assert "old numbers" in page.read_text(), "--check must not write"

    assert docs_tables.main([str(page)]) == 0
    assert f"rewritten: <!-- tables: {path} --shots 5 -->" in capsys.readouterr().out
    tables.main([str(path), "--shots", "5"])
    expected = capsys.readouterr().out.strip()
    assert "| d | 56 | 5 | lora r=8 | 0.600 ± 1.271 |" in expected
    assert page.read_text() == f"intro\n<!-- tables: {path} --shots 5 -->\n{expected}\n<!-- /tables -->\noutro\n"
    assert docs_tables.main([str(page), "--check"]) == 0

    page.write_text("<!-- tables: x -->\nno end marker\n")
    with pytest.raises(
        SystemExit, match="page.md: a `<!-- tables:` block at character 0 has no `-->` or no `<!-- /tables -->`"
    ):
        docs_tables.main([str(page), "--check"])
    page.write_text(f"<!-- tables: {path} --plot p.png -->\n<!-- /tables -->\n")
    with pytest.raises(SystemExit, match="page.md: .* a docs block cannot write a plot"):
        docs_tables.main([str(page), "--check"])


def test_map_marks_points_tried_on_fewer_splits():
    def grid(*points):
        return [
            {"learning_rate": lr, "alpha": 1.0, "validation_accuracy": v, "validation_loss": 1.0} for lr, v in points
        ]

    a = record("lora r=1", 0, 0.5, 1, grid((1e-3, 0.2), (1e-2, 0.4)))
    b = record("lora r=1", 1, 0.5, 1, grid((1e-3, 0.4), (1e-2, 0.6), (3.33e-2, 0.7)))  # one extension point
    out = tables.alpha_lr_map_markdown([a, b])
    assert "| 1 | 0.300 | 0.500 | 0.700 (1) |" in out


def test_map_of_a_method_without_a_scale_is_one_row_of_learning_rates():
    points = ((1e-2, 0.2), (1e-1, 0.6))
    grid = [{"learning_rate": lr, "alpha": None, "validation_accuracy": v, "validation_loss": 1.0} for lr, v in points]
    out = tables.alpha_lr_map_markdown([record("vera r=256", 0, 0.5, 1, grid)])
    assert "vera r=256 (validation accuracy, mean over 1 split(s)" in out
    assert "| alpha \\ lr | 0.01 | 0.1 |" in out and "| - | 0.200 | 0.600 |" in out
    lower = [{"learning_rate": 1e-3, "alpha": None, "validation_accuracy": 0.1, "validation_loss": 1.0}]
    out = tables.alpha_lr_map_markdown([record("vera r=256", 0, 0.5, 1, grid), record("vera r=256", 0, 0.5, 1, lower)])
    assert "mean over 1 split(s)" in out and "| - | 0.100 | 0.200 | 0.600 |" in out  # one split searched twice


def test_shots_keeps_the_few_shot_or_the_full_shot_records(tmp_path, capsys):
    records = [record("lora r=8", s, 0.5, 147_456) for s in (0, 1)]
    full = record("lora r=8", 0, 0.9, 147_456)
    full.shots = "full (100/class)"
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in [*records, full]))
    tables.main([str(path), "--shots", "full"])
    assert "| d | 56 | full (100/class) | lora r=8 | 0.900 (one split) |" in capsys.readouterr().out
    tables.main([str(path), "--shots", "5,20"])
    out = capsys.readouterr().out
    assert "| d | 56 | 5 | lora r=8 | 0.500 ± 0.000 |" in out and "full (100/class)" not in out
    with pytest.raises(SystemExit, match="--shots 1: no record has these k"):
        tables.main([str(path), "--shots", "1"])


def test_validation_tabulates_what_validation_preferred(tmp_path, capsys):
    records = [record("lora r=8", s, 0.5, 147_456) for s in (0, 1)]
    records += [record("lora r=1", s, 0.9, 18_432) for s in (0, 1)]
    for r, v in zip(records, (0.6, 0.7, 0.2, 0.3)):
        r.validation_accuracy = v
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    tables.main([str(path), "--validation", "--reference", "lora r=8"])
    out = capsys.readouterr().out
    assert "| test accuracy" not in out and "| d | 56 | 5 | lora r=1 | 0.250 ± 0.635 |" in out
    assert "| pooled | lora r=1 | 2 | -0.400 ± 0.000 | 0 / 0 / 2 |" in out  # on test it would be +0.4
    assert "| lora r=1 | 2 | (-, 0.001): 2 | 0 |" in out  # the points chosen, and how often on the grid's edge
    with pytest.raises(SystemExit, match="--validation: prints the results and frontier tables only"):
        tables.main([str(path), "--validation", "--verdict"])
    with pytest.raises(ValueError, match=r"metric='tset': expected one of \('test', 'validation'\)"):
        tables.results_markdown(records, reference="lora r=8", metric="tset")


def test_plot_panels_keep_each_k_apart(tmp_path):
    records = [record("lora r=8", s, t, 147_456) for s, t in ((0, 0.5), (1, 0.7))]
    records += [record("kadaptation n=8 parametrization=lora_matched", s, t, 19_456) for s, t in ((0, 0.6), (1, 0.6))]
    for s, t, variant, adapter in (
        (0, 0.9, "lora r=8", 147_456),
        (0, 0.8, "kadaptation n=8 parametrization=lora_matched", 19_456),
    ):
        k20 = record(variant, s, t, adapter)
        k20.shots = 20
        records.append(k20)
    other = record("lora r=8", 0, 0.3, 147_456)
    other.dataset = "e"  # has k = 5 only
    k5, k20 = tables.frontier_panels(records + [other], reference="lora r=8")
    assert k20[1] == {
        "title": "e, k = 20: no split tabulated",
        "points": [],
        "ylabel": "test accuracy (mean ± 95 % CI)",
    }
    assert [p["title"] for p in k5] == [
        "d, k = 5, 56 px, 2 splits",
        "e, k = 5, 56 px, 1 split",
        "k = 5, pooled (2 splits): paired difference vs lora r=8 (q/v)",
    ]
    assert k5[0]["points"][1][:3] == ("lora r=8", 147_456, pytest.approx(0.6))  # not mixed with k = 20's 0.9
    assert k20[0]["title"] == "d, k = 20, 56 px, 1 split" and k20[0]["points"][0][2] == pytest.approx(0.8)
    assert k20[2]["points"] == [
        (
            "kadaptation n=8 parametrization=lora_matched",
            19_456,
            pytest.approx(-0.1),
            pytest.approx(float("nan"), nan_ok=True),
        )
    ]
    tables.frontier_plot(records, tmp_path / "frontier.png", reference="lora r=8")
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    full = record("lora r=8", 0, 0.9, 147_456)
    full.shots = "full (100/class)"
    (row,) = tables.frontier_panels([full], reference="lora r=8")
    assert (
        row[-1]["title"] == "k = full (100/class): nothing to pair (pairs need a few-shot k and records of lora r=8)"
    )
    assert row[-1]["points"] == [] and row[0]["points"][0][2] == pytest.approx(0.9)
