"""Accuracy as an `evaluate` metric module: the fraction of predictions equal to their references.

Loaded by path (`evaluate.load(".../accuracy.py")`) when the Hub's `accuracy` cannot be fetched; computes the same.
"""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy: the fraction of predictions equal to their references.",
            citation="",
            inputs_description="predictions: predicted labels (int); references: true labels (int).",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        if not references:
            raise ValueError("Accuracy of an empty evaluation set: there are no references.")
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": correct / len(references)}
