"""Offline datasets, local image folders, few-shot sampling, preprocessing, and their errors."""

import hashlib

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image

from peft_kadapt.training.data import FASHION_MNIST_DIR, few_shot, image_transform, load_image_dataset


PINNED_DIGITS_VALIDATION = "07baa8a2e27a79f9"  # few_shot(digits, shots=10, seed=3, val_shots=2, test_per_class=20)
EXPECTED = {  # name: (split sizes, number of classes, image size)
    "mnist5k": ({"train": 5000}, 10, (28, 28)),
    "digits": ({"train": 1797}, 10, (8, 8)),
    "textiles": ({"train": 2000}, 3, (250, 250)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_offline_datasets(name):
    sizes, classes, size = EXPECTED[name]
    dsd = load_image_dataset(name)
    assert isinstance(dsd, DatasetDict) and {k: len(v) for k, v in dsd.items()} == sizes
    features = dsd["train"].features
    assert isinstance(features["image"], Image) and isinstance(features["label"], ClassLabel)
    assert features["label"].num_classes == classes
    assert dsd["train"][0]["image"].size == size
    counts = np.bincount(dsd["train"]["label"], minlength=classes)
    assert counts.min() > 0


@pytest.mark.slow
def test_fashion_mnist():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist is not installed (make test installs it when run as root)")
    dsd = load_image_dataset("fashion_mnist")
    assert {k: len(v) for k, v in dsd.items()} == {"train": 60000, "test": 10000}
    assert dsd["train"].features["label"].names[9] == "Ankle boot"
    assert np.bincount(dsd["test"]["label"]).tolist() == [1000] * 10


def digest(ds) -> str:
    return hashlib.sha256(np.asarray([np.asarray(img) for img in ds["image"]]).tobytes()).hexdigest()


def test_few_shot_is_balanced_seeded_and_disjoint():
    dsd = load_image_dataset("digits")
    a = few_shot(dsd, shots=10, seed=3, val_shots=2, test_per_class=20)
    assert {k: len(v) for k, v in a.items()} == {"train": 80, "validation": 20, "test": 200}
    for split, per_class in (("train", 8), ("validation", 2), ("test", 20)):
        assert np.bincount(a[split]["label"]).tolist() == [per_class] * 10
    b = few_shot(dsd, shots=10, seed=3, val_shots=2, test_per_class=20)
    c = few_shot(dsd, shots=10, seed=4, val_shots=2, test_per_class=20)
    assert digest(a["train"]) == digest(b["train"]) and digest(a["train"]) != digest(c["train"])
    # the same images on every machine: numpy's PCG64 stream is platform independent; pinned by content
    assert digest(a["validation"])[:16] == PINNED_DIGITS_VALIDATION
    rows = {split: {tuple(np.asarray(img).ravel()) for img in a[split]["image"]} for split in a}
    assert not rows["train"] & rows["validation"] and not rows["train"] & rows["test"]


def test_full_shot_and_source_test_split():
    dsd = load_image_dataset("textiles")
    full = few_shot(dsd, shots=None, seed=0, test_per_class=10)
    assert len(full["test"]) == 30 and len(full["train"]) + len(full["validation"]) == 2000 - 30
    with_test = DatasetDict(
        {"train": dsd["train"].select(range(0, 2000, 2)), "test": dsd["train"].select(range(1, 60, 2))}
    )
    split = few_shot(with_test, shots=5, seed=0)
    assert len(split["test"]) == 30  # the source's own test split, whole


def test_image_folder_and_column_names(tmp_path):
    from PIL import Image as PILImage

    for split in ("train", "test"):
        for c, colour in enumerate(("red", "blue")):
            folder = tmp_path / split / f"class_{colour}"
            folder.mkdir(parents=True)
            for i in range(6):
                PILImage.new("L" if i % 2 else "RGB", (20, 10), colour if not i % 2 else 100 + c).save(
                    folder / f"{i}.png"
                )
    dsd = load_image_dataset(str(tmp_path))
    assert set(dsd) == {"train", "test"} and dsd["train"].features["label"].names == ["class_blue", "class_red"]
    batch = image_transform([0.5] * 3, [0.5] * 3, 16)(dsd["train"][:4])
    assert [tuple(p.shape) for p in batch["pixel_values"]] == [(3, 16, 16)] * 4  # grey became RGB, resized

    renamed = Dataset.from_dict({"img": dsd["train"]["image"], "target": dsd["train"]["label"]})
    renamed.to_parquet(str(tmp_path / "data.parquet"))
    loaded = load_image_dataset(
        "parquet", image_column="img", label_column="target", data_files=str(tmp_path / "data.parquet")
    )
    assert loaded["train"].column_names == ["image", "label"] and len(loaded["train"]) == 12


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: load_image_dataset("imagenet_offline"), "Unknown dataset 'imagenet_offline'"),
        (lambda: few_shot(load_image_dataset("digits"), shots=500, test_per_class=10), "has 1"),
        (lambda: few_shot(load_image_dataset("digits"), shots=0), "`shots` must be a positive integer"),
        (lambda: few_shot(load_image_dataset("digits"), shots=3, val_shots=3), "leaves no training image"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_missing_column_labels_outside_classes_and_empty_class(tmp_path):
    ds = Dataset.from_dict({"img": [np.zeros((4, 4), np.uint8)] * 3, "label": [0, 1, 2]})
    ds = ds.cast_column("img", Image())
    ds.to_parquet(str(tmp_path / "a.parquet"))
    with pytest.raises(ValueError, match=r"no column 'image' \(passed as `image_column`\); its columns are"):
        load_image_dataset("parquet", data_files=str(tmp_path / "a.parquet"))
    # -1 is how Hub datasets mark unlabeled images (e.g. a hidden test split)
    unlabeled = Dataset.from_dict({"image": ds["img"], "label": [0, 1, -1]}).cast_column("image", Image())
    unlabeled = unlabeled.cast_column("label", ClassLabel(names=["a", "b", "c"]))
    unlabeled.to_parquet(str(tmp_path / "b.parquet"))
    with pytest.raises(ValueError, match=r"Split 'train' has labels \[-1\] outside the class list 0..2"):
        load_image_dataset("parquet", data_files=str(tmp_path / "b.parquet"))
    empty = Dataset.from_dict({"image": ds["img"], "label": [0, 0, 2]}).cast_column("image", Image())
    empty = empty.cast_column("label", ClassLabel(names=["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"Classes \['b'\] have no images"):
        few_shot(DatasetDict({"train": empty}), shots=1)


def test_transform_normalises():
    dsd = load_image_dataset("digits")
    out = image_transform([0.0] * 3, [1.0] * 3, 8)(dsd["train"][:2])
    x = out["pixel_values"][0]
    assert x.shape == (3, 8, 8) and torch.allclose(x[0], x[1]) and 0 <= x.min() and x.max() <= 1.0 + 1e-5
    assert out["labels"] == dsd["train"][:2]["label"]


def picture() -> np.ndarray:
    """An 8-bit grey picture with a gradient and a bright square: (24, 24) uint8."""
    array = np.tile(np.linspace(0, 200, 24), (24, 1)).astype(np.uint8)
    array[6:14, 8:16] = 250
    return array


def in_mode(array: np.ndarray, mode: str):
    from PIL import Image as PILImage

    grey = PILImage.fromarray(array)
    if mode == "I;16":
        return PILImage.fromarray(array.astype(np.uint16) * 257)
    if mode == "I":
        return PILImage.fromarray(array.astype(np.int32) * 257)
    if mode == "F":
        return PILImage.fromarray(array.astype(np.float32) / 255)
    return grey.convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_depth_gives_the_model_the_same_picture(mode):
    """16-bit and float images are read by their range, not clipped at 255 (which made them white or black)."""
    transform = image_transform([0.5] * 3, [0.5] * 3, 24)
    expected = transform({"image": [in_mode(picture(), "L")], "label": [0]})["pixel_values"][0]
    got = transform({"image": [in_mode(picture(), mode)], "label": [0]})["pixel_values"][0]
    torch.testing.assert_close(got, expected, atol=2 * 2 / 255, rtol=0)  # 8-bit steps, normalised by std 0.5


def test_binary_images_are_black_and_white():
    from PIL import Image as PILImage

    image = PILImage.fromarray(picture() > 128)  # mode "1"
    assert image.mode == "1"
    pixels = image_transform([0.0] * 3, [1.0] * 3, 24)({"image": [image], "label": [0]})["pixel_values"][0]
    assert set(torch.unique(pixels).tolist()) <= {0.0, 1.0} and pixels.max() == 1.0


@pytest.mark.parametrize(
    "array, words",
    [
        (np.full((4, 4), 300.0, dtype=np.float32), ["mode 'F'", "from 300 to 300", "Scale it to [0, 1]"]),
        (np.full((4, 4), 70000, dtype=np.int32), ["mode 'I'", "outside the 16-bit range 0..65535"]),
    ],
)
def test_a_range_that_cannot_be_read_is_refused_with_the_mode(array, words, tmp_path):
    from PIL import Image as PILImage

    for split in ("a", "b"):
        (tmp_path / split).mkdir()
        PILImage.fromarray(array).save(tmp_path / split / "x.tif")
    with pytest.raises(ValueError) as raised:
        load_image_dataset(str(tmp_path))
    assert "x.tif" in str(raised.value) and all(w in str(raised.value) for w in words), str(raised.value)


def write_classes(root, classes=("cats", "dogs"), count=4):
    from PIL import Image as PILImage

    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(count):
            PILImage.fromarray(np.full((8, 8), 40 * label + i, dtype=np.uint8)).save(root / name / f"{i}.png")


def test_symlinked_class_folders_are_followed_and_empty_ones_named(tmp_path):
    write_classes(tmp_path / "elsewhere", classes=("birds",))
    write_classes(tmp_path / "data")
    (tmp_path / "data" / "birds").symlink_to(tmp_path / "elsewhere" / "birds", target_is_directory=True)
    dsd = load_image_dataset(str(tmp_path / "data"))
    assert dsd["train"].features["label"].names == ["birds", "cats", "dogs"] and len(dsd["train"]) == 12
    (tmp_path / "data" / "fish").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['fish'\] .* hold no images"):
        load_image_dataset(str(tmp_path / "data"))


def test_a_validation_split_of_the_source_is_used(tmp_path, caplog):
    write_classes(tmp_path / "train", count=6)
    write_classes(tmp_path / "validation", count=2)
    source = load_image_dataset(str(tmp_path))
    with caplog.at_level("INFO"):
        splits = few_shot(source, 3, seed=0, test_per_class=2)
    assert len(splits["validation"]) == 4 and len(splits["train"]) == 6  # every shot trains
    assert splits["validation"]["image"][0] == source["validation"]["image"][0]
    assert "the source's own validation split (4 images)" in caplog.text
    carved = few_shot(source, 3, seed=0, test_per_class=2, val_shots=1)
    assert len(carved["validation"]) == 2 and len(carved["train"]) == 4
