"""Metrics go through `evaluate`, offline: the accuracy module shipped with the package."""

import numpy as np
import pytest

from peft_kadapt.training import load_accuracy


def test_offline_accuracy_is_the_shipped_module_and_counts_right():
    metric = load_accuracy()  # the suite runs with HF_HUB_OFFLINE=1: the Hub's module cannot be fetched
    assert metric.description.startswith("Accuracy: the fraction of predictions equal to their references")
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 4, 101), rng.integers(0, 4, 101)
    for start in range(0, 101, 25):  # add_batch, as the Accelerate loop does after gather_for_metrics
        metric.add_batch(predictions=predictions[start : start + 25], references=references[start : start + 25])
    assert metric.compute() == {"accuracy": pytest.approx(float((predictions == references).mean()))}
    with pytest.raises(ValueError, match="empty evaluation set"):
        metric.compute(predictions=[], references=[])
