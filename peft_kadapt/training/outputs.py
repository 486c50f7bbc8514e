"""Output directories of the commands: one run at a time, no stale or half-written artefacts, exact checkpoints.

- `claim_output_dir`: refuses a directory holding an earlier run's files unless asked to overwrite (then removes
  those artefacts and nothing else) and takes a lock, so a second run into the same directory fails at once.
- `staged` / `write_atomically`: files appear complete or not at all (written under a temporary name, then renamed).
- `load_checkpoint_weights`: a Trainer checkpoint's weights back into a model. transformers 5 saves ViT weights under
  their original (4.x) names and the Trainer's own reload matches raw names, so for models without adapter it loads
  the head and little else; `from_pretrained` applies the renaming.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path


logger = logging.getLogger(__name__)
LOCK = ".kadapt.lock"
# what the training commands write: removed by --overwrite_output_dir, and nothing else is
RUN_ARTEFACTS = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "metrics.json",
    "training_curve.png",
    "training_args.bin",
    "trainer_state.json",
)
CHECKPOINT_PREFIX = "checkpoint-"


class OutputDirError(ValueError):
    """An output directory that cannot be used as asked."""


def earlier_artefacts(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.name in RUN_ARTEFACTS or p.name.startswith(CHECKPOINT_PREFIX))


@contextlib.contextmanager
def claim_output_dir(output_dir: str | os.PathLike, overwrite: bool = False, resuming: bool = False):
    """Use `output_dir` for one run: refuse an earlier run's artefacts unless `overwrite` (or `resuming` from a
    checkpoint there), and hold a lock file for the duration, so that a concurrent run into it fails at once."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK
    _acquire(lock)
    try:
        earlier = earlier_artefacts(output_dir)
        if earlier and not resuming:
            if not overwrite:
                raise OutputDirError(
                    f"{output_dir} already holds the files of an earlier run ({', '.join(p.name for p in earlier[:4])}"
                    f"{', ...' if len(earlier) > 4 else ''}). Pass --overwrite_output_dir to replace them, or choose "
                    "another --output_dir."
                )
            for path in earlier:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        yield output_dir
    finally:
        lock.unlink(missing_ok=True)


def _acquire(lock: Path) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock.read_text().strip() or "?"
            if _process_alive(owner):
                raise OutputDirError(
                    f"Another run (process {owner}) is writing into {lock.parent}: wait for it, or choose another "
                    f"--output_dir. If no run is active, delete {lock}."
                ) from None
            lock.unlink(missing_ok=True)  # left by a run that died: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return


def _process_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged(output_dir: str | os.PathLike, is_main: bool = True):
    """Yield a staging folder inside `output_dir`; write the run's artefacts there. On success the main process moves
    each file into `output_dir` by rename (files appear complete or not at all); on failure the staging is removed.
    Every process gets the same path (distributed saves are collective), only the main one moves files."""
    output_dir = Path(output_dir)
    staging = output_dir / ".staging"
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    try:
        yield staging
        if is_main:
            for path in sorted(staging.iterdir()):
                os.replace(path, output_dir / path.name)
    finally:
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)


def load_checkpoint_weights(model, checkpoint: str | os.PathLike) -> None:
    """Load the weights a Trainer checkpoint holds into `model` (a model without adapter), through `from_pretrained`,
    which maps the saved names to the model's; every tensor must be found."""
    reloaded = type(model).from_pretrained(str(checkpoint), config=model.config)
    missing, unexpected = model.load_state_dict(reloaded.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint {checkpoint} does not hold this model's weights (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}). Resume or select with the arguments of the run that wrote it."
        )
    logger.info("Loaded every weight of %s (the Trainer's own reload maps no renamed keys and may warn).", checkpoint)
