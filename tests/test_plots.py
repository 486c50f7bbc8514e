"""Every plot the project writes keeps its titles, labels and legend inside the saved picture (long variant names and
dataset paths once pushed the legend and titles past the figure's edges, where they were cut off)."""

import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from peft_kadapt.training.bench.report import pareto_plot
from peft_kadapt.training.intrinsic_sweep import plot as intrinsic_plot
from peft_kadapt.training.plotting import plot_training_curve, text_outside

from test_tables import record


sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
LONG = [
    "kadaptation n=16 r=2 parametrization=lora_matched targets=q_proj+k_proj+v_proj+o_proj+fc1+fc2",
    "lora r=8 targets=q_proj+k_proj+v_proj+o_proj+fc1+fc2",
    "lokr r=16 targets=q_proj+k_proj+v_proj+o_proj+fc1+fc2",
    "kadaptation n=8 r=1 parametrization=lora_matched targets=q_proj+v_proj",
]


@pytest.fixture
def saved(monkeypatch):
    """What each `savefig` saved: the figure and the area it was saved with (inches)."""
    calls = []
    real = Figure.savefig

    def spy(fig, path, **kwargs):
        area = kwargs.get("bbox_inches")
        area = fig.bbox_inches if area in (None, "standard") else area
        calls.append(text_outside(fig, area))
        return real(fig, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return calls


def long_records(dataset="/home/someone/data/my_image_folder_with_a_long_name"):
    records = [record(v, seed, 0.5 + 0.01 * i, 10_000 * (i + 1)) for i, v in enumerate(LONG) for seed in (0, 1)]
    for r in records:
        r.dataset = dataset
    return records


def test_pareto_plot(saved, tmp_path):
    pareto_plot(long_records(), tmp_path / "p.png")
    assert saved == [[]], saved


def test_training_curve(saved, tmp_path):
    history = [{"epoch": e, "loss": 1 / e, "eval_accuracy": 0.1 * e} for e in range(1, 6)]
    plot_training_curve(history, tmp_path / "c.png", title="kadaptation " + "with a long title " * 4)
    assert saved == [[]], saved


def test_intrinsic_dimension_plot(saved, tmp_path):
    curve = {0: 0.3, 10: 0.5, 100: 0.8, 1000: 0.9}
    summary = {f"group {g} " + "long name " * 3: {"validation_curve": curve, "d90": 100} for g in "abc"}
    intrinsic_plot({"summary": summary, "settings": {"reference": "full fine-tuning"}}, tmp_path / "d.png")
    assert saved == [[]], saved


def test_frontier_plot_draws_every_adapter_as_points_in_colours_of_its_own(saved, tmp_path, monkeypatch):
    import matplotlib.axes
    import tables

    drawn, lines = [], []
    real_errorbar, real_axhline = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.axhline

    def errorbar(ax, x, y, **kwargs):
        drawn.append((x, kwargs["color"]))
        return real_errorbar(ax, x, y, **kwargs)

    def axhline(ax, y=0, **kwargs):
        lines.append(y)
        return real_axhline(ax, y, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", axhline)
    records = long_records("d")
    records += [record("tinylora r=4 u=256 targets=q_proj+v_proj", s, 0.45, 6_144) for s in (0, 1)]  # below 10k
    records += [record("linear", s, 0.3, 0) for s in (0, 1)]
    tables.frontier_plot(records, tmp_path / "f.png", reference=LONG[1])
    assert saved == [[]], saved
    assert {x for x, _ in drawn} >= {6_144, 10_000, 20_000, 30_000, 40_000}  # tinylora is a point, not a line
    colours = {x: c for x, c in drawn}
    assert len({colours[x] for x in (6_144, 20_000, 30_000)}) == 3  # tinylora, lora, lokr: one colour each
    assert colours[10_000] == colours[40_000]  # both KAdaptation
    assert 0.3 in lines  # the linear probe: a reference line


def test_frontier_plot_labels_only_each_panels_pareto_front(saved, tmp_path, monkeypatch):
    import matplotlib.axes
    import tables

    labels = []
    real_annotate = matplotlib.axes.Axes.annotate

    def annotate(ax, text, xy, **kwargs):
        labels.append(text)
        return real_annotate(ax, text, xy, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", annotate)
    records = long_records("d")  # 10k to 40k adapter parameters, each better than the smaller ones: all on the front
    records += [record("vera r=512 targets=q_proj+v_proj", s, 0.505, 35_000) for s in (0, 1)]  # beaten by 30k at 0.52
    tables.frontier_plot(records, tmp_path / "f.png", reference=LONG[1])
    assert saved == [[]], saved
    assert "lokr r=16 all" in labels and "kadaptation n=8 r=1" in labels
    assert not any(label.startswith("vera") for label in labels)
    assert tables.pareto_front([("a", 1, 0.5, 0), ("b", 2, 0.5, 0), ("c", 2, 0.6, 0), ("d", 1, 0.5, 0)]) == {
        "a",
        "c",
        "d",
    }


def test_frontier_and_stability_plots(saved, tmp_path):
    import stability_maps
    import tables

    tables.frontier_plot(long_records(), tmp_path / "f.png", reference=LONG[1])
    grid = [
        {"alpha": a, "learning_rate": lr, "validation_accuracy": 0.5, "validation_loss": 1.0}
        for a in (1.0, 16.0)
        for lr in (1e-3, 3e-3)
    ]
    maps = stability_maps.mean_maps([record(v, 0, 0.5, 1, grid=grid) for v in LONG])
    stability_maps.plot(maps, str(tmp_path / "m.png"))
    assert saved == [[], []], saved
