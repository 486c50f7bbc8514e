"""Evaluation metrics through `evaluate`, online or offline."""

from __future__ import annotations

import logging
from pathlib import Path


logger = logging.getLogger(__name__)
SHIPPED = Path(__file__).parent / "evaluate_metrics"


def load_accuracy():
    """`evaluate.load("accuracy")` from the Hub, or this package's identical module (loaded by path) when the Hub
    cannot be reached (offline, HF_HUB_OFFLINE=1, or no connection)."""
    import evaluate

    try:
        return evaluate.load("accuracy")
    except Exception as error:  # evaluate raises several types when offline (ConnectionError, FileNotFoundError, ...)
        logger.info(
            "evaluate.load('accuracy') failed (%s): using the module shipped with peft_kadapt", type(error).__name__
        )
        return evaluate.load(str(SHIPPED / "accuracy.py"))
