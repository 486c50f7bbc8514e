"""The one logging set-up of the `kadapt` commands: what a user reads is progress and results, not library noise."""

from __future__ import annotations

import logging
import sys
import warnings


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, stream=sys.stdout) -> None:
    """Log this package's messages at `level` with one format; keep transformers to errors and without the bars it
    draws for loading and writing weights; drop the warnings that say nothing to a user of these commands."""
    import transformers

    logging.basicConfig(format=FORMAT, level=level, handlers=[logging.StreamHandler(stream)], force=True)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    # transformers 5 deprecates names that peft 0.21 still calls; nothing a user can change
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*", category=FutureWarning)
