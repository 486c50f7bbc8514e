"""Output directories of the commands: one run at a time, no stale or half-written artefacts, exact checkpoints.

- `claim_output_dir`: refuses a directory holding an earlier run's files unless asked to overwrite (then removes what
  that run wrote, by the folder's manifest, and nothing else), refuses to replace files it did not write, checks that
  a resumed run is the same run, and takes a lock, so a second run into the same directory fails at once.
- `staged` / `write_atomically`: files appear complete or not at all (written under a temporary name, then renamed).
- `load_checkpoint_weights`: a Trainer checkpoint's weights back into a model. transformers 5 saves ViT weights under
  their original (4.x) names and the Trainer's own reload matches raw names, so for models without adapter it loads
  the head and little else; `from_pretrained` applies the renaming.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path


logger = logging.getLogger(__name__)
LOCK = ".kadapt.lock"
# written by every claim: who uses the folder, and which of its entries were there before the first run (not ours)
MANIFEST = ".kadapt-run.json"
# names a run writes into the folder itself: a file of these names that no run of this program wrote would be replaced
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
_BOOKKEEPING = {LOCK, MANIFEST, ".staging"}


class OutputDirError(ValueError):
    """An output directory that cannot be used as asked."""


def read_manifest(output_dir: Path) -> dict | None:
    try:
        return json.loads((output_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _split_entries(output_dir: Path, manifest: dict | None) -> tuple[list[str], list[str]]:
    """(entries an earlier run of this program wrote, entries it did not): by the manifest, never by name alone."""
    entries = sorted(p.name for p in output_dir.iterdir() if p.name not in _BOOKKEEPING)
    foreign = set(manifest["foreign"]) if manifest else set(entries)
    return [e for e in entries if e not in foreign], [e for e in entries if e in foreign]


@contextlib.contextmanager
def claim_output_dir(
    output_dir: str | os.PathLike, overwrite: bool = False, resuming: bool = False, run: dict | None = None
):
    """Use `output_dir` for one run and hold a lock file meanwhile, so that a concurrent run into it fails at once.

    The folder's manifest (`.kadapt-run.json`) records what the run is (`run`, e.g. the method) and which entries were
    in the folder before the first run of this program. An earlier run's entries are refused unless `overwrite` (then
    removed, and only they) or `resuming` (then the manifest's run must match `run`). Entries the program did not
    write are kept, but one a run would replace (a README.md, a config.json, ...) is refused."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK
    _acquire(lock)
    try:
        manifest = read_manifest(output_dir)
        ours, foreign = _split_entries(output_dir, manifest)
        if resuming:
            _check_resumable(output_dir, manifest, run or {})
        elif ours and not overwrite:
            raise OutputDirError(
                f"{output_dir} already holds the files of an earlier run ({', '.join(ours[:4])}"
                f"{', ...' if len(ours) > 4 else ''}). Pass --overwrite_output_dir to replace them, or choose "
                "another --output_dir."
            )
        elif ours:
            for name in ours:
                path = output_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        clashes = [e for e in foreign if e in RUN_ARTEFACTS or e.startswith(CHECKPOINT_PREFIX)]
        if clashes:
            raise OutputDirError(
                f"{output_dir} holds {', '.join(clashes[:4])}, which no run of this program wrote and this run would "
                "replace (is it a model or another tool's folder?). Choose an empty or new --output_dir; "
                "--overwrite_output_dir removes only what an earlier run of this program wrote."
            )
        write_atomically(output_dir / MANIFEST, json.dumps({"run": run or {}, "foreign": foreign}, indent=2))
        yield output_dir
    finally:
        lock.unlink(missing_ok=True)


def _check_resumable(output_dir: Path, manifest: dict | None, run: dict) -> None:
    if manifest is None:  # a new folder, or one written before manifests (peft_kadapt 0.1): nothing to compare
        return
    differ = {
        k: (manifest["run"].get(k), v) for k, v in run.items() if k in manifest["run"] and manifest["run"][k] != v
    }
    if differ:
        said = ", ".join(f"{k} {old!r}, not {new!r}" for k, (old, new) in differ.items())
        raise OutputDirError(
            f"Cannot resume: the run in {output_dir} was made with {said}. Resume with the arguments of that run, or "
            "start a new one in another --output_dir."
        )


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
