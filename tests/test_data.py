"""Tests of common_jax.data: every source format, the pipeline's contract and bad inputs.

The data is written by the tests into tmp_path (tiny idx files, PNG/JPEG folders, archives,
CIFAR pickles); tests read the real MNIST files and the CIFAR-100 sample PNGs from
../shared/data when they are there.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from common_jax.data import (
    ImageSource,
    load_image_files,
    load_source,
    make_eval_iterator,
    make_train_iterator,
)
from common_jax.errors import UserError

REAL_MNIST = (Path(__file__).parents[1] / "../shared/data/mnist").resolve()


def data_cfg(**fields) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({"path": "", "tfds_name": ""})
    cfg.update(fields)
    return cfg


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_image(path: Path, value, *, size=(8, 8), mode="RGB", fmt=None) -> None:
    """A solid image; `value` is an int for gray or a tuple per channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path, format=fmt)


def in_memory_source(n: int, *, size: int = 4, channels: int = 1) -> ImageSource:
    """Image i is filled with the value i, and its label is i: both identify the example."""
    images = np.broadcast_to(
        np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, channels)
    ).copy()
    return ImageSource(
        name="memory", images=images, paths=None, labels=np.arange(n, dtype=np.int32),
        class_names=None,
    )


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iterator, count))


def labels(batches) -> np.ndarray:
    return np.concatenate([b["label"] for b in batches])


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round((images + 1.0) * 127.5).astype(np.int64)


# ----------------------------------------------------------------------------- idx files


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_train_and_test_splits(tmp_path, gz):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    test = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train, gz=gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.array([3, 1, 4, 1, 5]), gz=gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test, gz=gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.array([9, 2]), gz=gz)

    source = load_source(data_cfg(path=str(tmp_path)), split="train")
    assert source.images.dtype == np.uint8 and source.images.shape == (5, 3, 4, 1)
    np.testing.assert_array_equal(source.images[..., 0], train)
    assert source.labels.dtype == np.int32 and source.labels.tolist() == [3, 1, 4, 1, 5]
    assert source.paths is None and source.num_examples == 5

    source = load_source(data_cfg(path=str(tmp_path)), split="test")
    np.testing.assert_array_equal(source.images[..., 0], test)
    assert source.labels.tolist() == [9, 2]


def test_idx_file_truncated_is_a_user_error(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 3, 3)), gz=True)
    data = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-5]))
    with pytest.raises(UserError, match="truncated"):
        load_source(data_cfg(path=str(tmp_path)))


# ----------------------------------------------------------------------------- image folders


def test_image_folder_labels_from_subfolders(tmp_path):
    write_image(tmp_path / "dog" / "b.png", (10, 20, 30))
    write_image(tmp_path / "cat" / "x.jpg", (200, 200, 200))
    write_image(tmp_path / "cat" / "deeper" / "a.PNG", (0, 0, 0))
    write_image(tmp_path / "dog" / "notes.txt.bak", 0, mode="L", fmt="PNG")  # not an image name

    source = load_source(data_cfg(path=str(tmp_path)))
    assert source.images is None and source.num_examples == 3
    assert [Path(p).relative_to(tmp_path).as_posix() for p in source.paths] == [
        "cat/deeper/a.PNG", "cat/x.jpg", "dog/b.png",
    ]
    assert source.class_names == ["cat", "dog"]
    assert source.labels.dtype == np.int32 and source.labels.tolist() == [0, 0, 1]

    # Lossless PNG: the pipeline's values are exactly x / 127.5 - 1.
    batch = next(make_train_iterator(source, batch_size=3, image_size=8, channels=3, seed=0))
    dog = to_uint8(batch["image"][batch["label"] == 1])
    assert dog.shape == (1, 8, 8, 3) and (dog == np.array([10, 20, 30])).all()


def test_image_folder_without_labels(tmp_path):
    write_image(tmp_path / "top.png", (1, 2, 3))
    write_image(tmp_path / "sub" / "inner.png", (4, 5, 6))
    write_image(tmp_path / "other" / "inner.png", (4, 5, 6))
    source = load_source(data_cfg(path=str(tmp_path)))
    assert source.labels is None and source.class_names is None and source.num_examples == 3
    batch = next(make_train_iterator(source, batch_size=2, image_size=8, channels=3, seed=0))
    assert batch["label"].tolist() == [-1, -1]


def test_labels_from_subfolders_can_be_turned_off(tmp_path):
    write_image(tmp_path / "a" / "1.png", 0, mode="L")
    write_image(tmp_path / "b" / "2.png", 0, mode="L")
    source = load_source(data_cfg(path=str(tmp_path), labels_from_subfolders=False))
    assert source.labels is None and source.num_examples == 2


def test_split_subfolders_and_wrapper_folder(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("a", "b"):
            for i in range(n):
                write_image(tmp_path / "wrap" / split / cls / f"{i}.png", 9, mode="L")
    train = load_source(data_cfg(path=str(tmp_path)), split="train")
    test = load_source(data_cfg(path=str(tmp_path)), split="test")
    assert (train.num_examples, test.num_examples) == (6, 2)
    assert train.class_names == ["a", "b"] and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(UserError, match="'validation'"):
        load_source(data_cfg(path=str(tmp_path)), split="validation")


def test_tar_gz_archive_is_extracted_once_and_reused(tmp_path, monkeypatch):
    folder = tmp_path / "faces"
    for i in range(4):
        write_image(folder / f"{i}.jpg", (i * 50, 0, 0))
    archive = tmp_path / "faces-64.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="images")  # one wrapper folder, as archives usually have
    cache = tmp_path / "cache"
    monkeypatch.setenv("COMMON_JAX_CACHE", str(cache))

    first = load_source(data_cfg(path=str(archive)))
    assert first.num_examples == 4 and first.labels is None
    extracted = list(cache.iterdir())
    assert len(extracted) == 1 and extracted[0].name.startswith("faces-64-")
    assert all(Path(p).is_relative_to(extracted[0]) for p in first.paths)

    def no_extraction(*args, **kwargs):
        raise AssertionError("the archive was extracted again")

    monkeypatch.setattr(tarfile.TarFile, "extractall", no_extraction)
    second = load_source(data_cfg(path=str(archive)))
    assert second.paths == first.paths
    assert list(cache.iterdir()) == extracted  # no temporary folders left behind

    # The same bytes copied elsewhere with a newer mtime (a fresh copy of a data folder).
    copy = tmp_path / "elsewhere" / archive.name
    copy.parent.mkdir()
    shutil.copyfile(archive, copy)
    os.utime(copy, (1e9, 2e9))
    assert load_source(data_cfg(path=str(copy))).paths == first.paths
    assert list(cache.iterdir()) == extracted
    monkeypatch.undo()

    # Replaced contents under the same name get an extraction of their own.
    monkeypatch.setenv("COMMON_JAX_CACHE", str(cache))
    write_image(folder / "4.jpg", (250, 0, 0))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="images")
    assert load_source(data_cfg(path=str(archive))).num_examples == 5
    assert len(list(cache.iterdir())) == 2


def test_pipeline_reads_archive_images(tmp_path, monkeypatch):
    write_image(tmp_path / "src" / "x" / "0.png", (255, 0, 0))
    write_image(tmp_path / "src" / "y" / "0.png", (0, 0, 255))
    archive = tmp_path / "two.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src", arcname=".")
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "cache"))
    source = load_source(data_cfg(path=str(archive)))
    assert source.class_names == ["x", "y"]
    batch = next(make_train_iterator(source, batch_size=2, image_size=4, channels=3, seed=1))
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0


# ----------------------------------------------------------------------------- pipeline contract


def test_batches_have_the_right_dtype_shape_and_range():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 6, 6, 3), dtype=np.uint8)
    images[0, 0, 0] = [0, 255, 0]  # make sure both extremes occur
    source = ImageSource("rand", images, None, np.zeros(16, np.int32), None)
    batch = next(make_train_iterator(source, batch_size=16, image_size=6, channels=3, seed=0))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, 6, 6, 3)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (16,)
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
    # Same pixels, reordered by the shuffle: compare as sorted per-image sums.
    sums = np.sort(to_uint8(batch["image"]).sum(axis=(1, 2, 3)))
    np.testing.assert_array_equal(sums, np.sort(images.astype(np.int64).sum(axis=(1, 2, 3))))


def test_order_is_deterministic_from_the_seed():
    source = in_memory_source(12)
    kwargs = {"batch_size": 4, "image_size": 4, "channels": 1}
    a = take(make_train_iterator(source, seed=7, **kwargs), 6)
    b = take(make_train_iterator(source, seed=7, **kwargs), 6)
    c = take(make_train_iterator(source, seed=8, **kwargs), 6)
    np.testing.assert_array_equal(labels(a), labels(b))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not np.array_equal(labels(a), labels(c))
    # Every epoch is a permutation, and epochs differ.
    epochs = labels(a).reshape(2, 12)
    assert all(sorted(e) == list(range(12)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    # The image is the one the label belongs to.
    assert (to_uint8(a[0]["image"])[:, 0, 0, 0] == a[0]["label"]).all()


def test_resume_with_start_batch_matches_a_fresh_iterator_across_epochs():
    source = in_memory_source(10)  # 10 examples, batches of 4: batch 2 spans epochs 0 and 1
    kwargs = {"batch_size": 4, "image_size": 4, "channels": 1, "seed": 3}
    fresh = take(make_train_iterator(source, **kwargs), 9)
    for start in (1, 2, 3, 7):
        resumed = take(make_train_iterator(source, start_batch=start, **kwargs), 9 - start)
        for x, y in zip(fresh[start:], resumed, strict=True):
            np.testing.assert_array_equal(x["label"], y["label"])
            np.testing.assert_array_equal(x["image"], y["image"])


def test_processes_read_their_rows_of_the_one_global_batch():
    # 3 processes x 7 rows: together exactly the batches of one process reading 21 rows, with
    # the same augmentation, across an epoch boundary (25 examples) and after resuming.
    rng = np.random.RandomState(0)  # random pixels: crops and flips change the images
    source = ImageSource(name="noise", images=rng.randint(0, 256, (25, 6, 6, 1), np.uint8),
                         paths=None, labels=np.arange(25, dtype=np.int32), class_names=None)
    kwargs = {"image_size": 6, "channels": 1, "seed": 5, "augment": "cifar"}
    whole = take(make_train_iterator(source, batch_size=21, **kwargs), 3)
    parts = [take(make_train_iterator(source, batch_size=7, process_index=i, process_count=3,
                                      **kwargs), 3) for i in range(3)]
    for step in range(3):
        for key in ("label", "image"):
            joined = np.concatenate([parts[i][step][key] for i in range(3)])
            np.testing.assert_array_equal(joined, whole[step][key])
    resumed = take(make_train_iterator(source, batch_size=7, process_index=2, process_count=3,
                                       start_example=21, **kwargs), 2)
    np.testing.assert_array_equal(resumed[0]["image"], parts[2][1]["image"])


def test_in_memory_images_are_resized_and_converted():
    source = in_memory_source(4, size=5, channels=1)
    batch = next(make_train_iterator(source, batch_size=4, image_size=8, channels=3, seed=0))
    assert batch["image"].shape == (4, 8, 8, 3)
    # Resizing a constant image keeps it constant; gray becomes R = G = B.
    pixels = to_uint8(batch["image"])
    assert (pixels == batch["label"][:, None, None, None]).all()


# ----------------------------------------------------------------------------- bad inputs


def test_missing_folder_and_no_tfds_name(tmp_path):
    with pytest.raises(UserError, match="does not exist; set --config.data.path"):
        load_source(data_cfg(path=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="does not exist"):
        load_source(data_cfg())


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"no images found in .*\*\.png, \*\.jpg"):
        load_source(data_cfg(path=str(tmp_path)))


def _write_broken_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not a jpeg")
    write_image(folder / "whole.jpg", (1, 2, 3), size=(32, 32))
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])


def test_all_images_unreadable(tmp_path):
    _write_broken_images(tmp_path)
    with pytest.raises(UserError, match=r"no readable images in .*\(3 files could not be read"):
        load_source(data_cfg(path=str(tmp_path)))


def test_some_images_unreadable_are_skipped(tmp_path, caplog):
    _write_broken_images(tmp_path)
    write_image(tmp_path / "good.png", (5, 5, 5))
    with caplog.at_level(logging.WARNING):
        source = load_source(data_cfg(path=str(tmp_path)))
    assert [Path(p).name for p in source.paths] == ["good.png"]
    assert "skipping 3 of 4 image files" in caplog.text


def test_mixed_sizes_are_resized_with_center_crop(tmp_path, caplog):
    write_image(tmp_path / "a.png", (100, 100, 100), size=(4, 4))
    wide = Image.new("RGB", (12, 4), (0, 0, 0))  # black | white | black: the crop keeps white
    wide.paste((255, 255, 255), (4, 0, 8, 4))
    wide.save(tmp_path / "b.png")
    with caplog.at_level(logging.WARNING):
        source = load_source(data_cfg(path=str(tmp_path)))
    assert "2 different sizes" in caplog.text
    iterator = make_train_iterator(source, batch_size=2, image_size=8, channels=3, seed=0)
    images = sorted(to_uint8(next(iterator)["image"]), key=lambda x: x.mean())
    assert images[0].shape == (8, 8, 3)
    assert (images[0] == 100).all() and (images[1] == 255).all()


def test_mixed_channels_are_converted(tmp_path, caplog):
    write_image(tmp_path / "gray.png", 60, mode="L")
    write_image(tmp_path / "rgb.png", (10, 20, 30))
    write_image(tmp_path / "rgba.png", (90, 90, 90, 0), mode="RGBA")
    write_image(tmp_path / "graya.png", (200, 7), mode="LA")
    with caplog.at_level(logging.WARNING):
        source = load_source(data_cfg(path=str(tmp_path)))
    assert "mixed channels" in caplog.text and "1 gray," in caplog.text

    rgb = next(make_train_iterator(source, batch_size=4, image_size=8, channels=3, seed=0))
    colours = {tuple(to_uint8(img)[0, 0]) for img in rgb["image"]}
    assert colours == {(60, 60, 60), (10, 20, 30), (90, 90, 90), (200, 200, 200)}

    gray = next(make_train_iterator(source, batch_size=4, image_size=8, channels=1, seed=0))
    assert gray["image"].shape == (4, 8, 8, 1)
    luma = round(0.2989 * 10 + 0.587 * 20 + 0.114 * 30)
    assert {int(to_uint8(img)[0, 0, 0]) for img in gray["image"]} == {60, luma, 90, 200}


def test_batch_larger_than_the_data(tmp_path):
    source = in_memory_source(10)
    with pytest.raises(UserError, match=r"batch of 12 examples \(6 per process x 2 processes\)"
                                        r" is larger than the 10 examples"):
        make_train_iterator(
            source, batch_size=6, image_size=4, channels=1, seed=0,
            process_index=1, process_count=2,
        )


@pytest.mark.parametrize(("image_size", "channels"), [(0, 1), (4, 2), (4, 4)])
def test_bad_image_size_or_channels(image_size, channels):
    with pytest.raises(UserError, match="image size|channels"):
        make_train_iterator(
            in_memory_source(4), batch_size=2, image_size=image_size, channels=channels, seed=0
        )


# ----------------------------------------------------------------------------- TFDS


def test_unknown_tfds_name_suggests_close_matches():
    with pytest.raises(UserError, match="unknown TFDS dataset 'mnsit'") as info:
        load_source(data_cfg(tfds_name="mnsit"))
    assert "'mnist'" in str(info.value) and "data.path" in str(info.value)


def test_tfds_mock_loads_and_batches(tmp_path, caplog):
    import tensorflow_datasets as tfds

    cfg = data_cfg(path=str(tmp_path / "not-here"), tfds_name="mnist")
    with tfds.testing.mock_data(num_examples=12), caplog.at_level(logging.INFO):
        source = load_source(cfg)
    assert "not found; using TFDS dataset 'mnist'" in caplog.text
    assert source.images.shape == (12, 28, 28, 1) and source.images.dtype == np.uint8
    assert source.labels.dtype == np.int32 and source.class_names[:2] == ["0", "1"]
    batch = next(make_train_iterator(source, batch_size=4, image_size=32, channels=1, seed=0))
    assert batch["image"].shape == (4, 32, 32, 1) and batch["label"].shape == (4,)


def test_tfds_load_failure_says_how_to_get_the_data(monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to reach the host\ntraceback details")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(UserError) as info:
        load_source(data_cfg(tfds_name="mnist"))
    message = str(info.value)
    assert "loading TFDS 'mnist' failed: Failed to reach the host;" in message
    assert "tfds build mnist" in message and "data.path" in message
    assert "\n" not in message


# ----------------------------------------------------------------------------- real data


def test_real_mnist_files():
    if not REAL_MNIST.is_dir():
        pytest.skip(f"real MNIST files not found at {REAL_MNIST}")
    train = load_source(data_cfg(path=str(REAL_MNIST)), split="train")
    test = load_source(data_cfg(path=str(REAL_MNIST)), split="test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    for source in (train, test):
        assert source.labels.min() == 0 and source.labels.max() == 9
        assert len(np.unique(source.labels)) == 10
    batch = next(make_train_iterator(test, batch_size=64, image_size=28, channels=1, seed=0))
    assert batch["image"].shape == (64, 28, 28, 1)
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_is_deterministic_resumable_and_a_flipped_padded_crop():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    source = ImageSource("rand", images, None, np.arange(10, dtype=np.int32), None)
    kwargs = {"batch_size": 4, "image_size": 8, "channels": 3, "seed": 5, "augment": "cifar"}
    first = take(make_train_iterator(source, **kwargs), 6)
    again = take(make_train_iterator(source, **kwargs), 6)
    resumed = take(make_train_iterator(source, start_batch=3, **kwargs), 3)
    plain = take(make_train_iterator(source, **{**kwargs, "augment": "none"}), 6)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    for x, y in zip(first[3:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(labels(first), labels(plain))  # the order is untouched

    # Every output is one of the 9x9 crops of the 4-pixel reflect-padded image, maybe mirrored.
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
    seen = set()
    for batch in first:
        for image, label in zip(to_uint8(batch["image"]), batch["label"], strict=True):
            matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)
                       if np.array_equal(image, (lambda c, f: c[:, ::-1] if f else c)(
                           padded[label, dy:dy + 8, dx:dx + 8], flip))]
            assert matches, "not a crop of the padded image"
            seen.add(matches[0])
    assert len(seen) > 10 and {flip for _, _, flip in seen} == {0, 1}


def test_unknown_augmentation_is_refused():
    with pytest.raises(UserError, match="--config.data.augment to one of none, flip, crop"):
        make_train_iterator(in_memory_source(4), batch_size=2, image_size=4, channels=1, seed=0,
                            augment="mixup")


# ----------------------------------------------------------------------------- evaluation batches


def test_eval_iterator_covers_the_split_once_in_order_with_padded_masked_batches():
    source = in_memory_source(37)
    batches = list(make_eval_iterator(source, batch_size=16, image_size=4, channels=1))
    assert [b["image"].shape for b in batches] == [(16, 4, 4, 1)] * 3
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == np.float32 and mask.tolist() == [1.0] * 37 + [0.0] * 11
    assert labels(batches)[:37].tolist() == list(range(37))
    assert (to_uint8(batches[0]["image"])[:, 0, 0, 0] == np.arange(16)).all()
    # Across processes: disjoint shards, all examples, the same number of batches each.
    shards = [list(make_eval_iterator(source, batch_size=4, image_size=4, channels=1,
                                      process_index=i, process_count=3)) for i in range(3)]
    assert {len(s) for s in shards} == {4}  # the largest shard: 13 examples
    real = [labels(s)[np.concatenate([b["mask"] for b in s]) == 1] for s in shards]
    assert sorted(np.concatenate(real).tolist()) == list(range(37))


def test_load_image_files_preprocesses_like_training_and_names_missing_files(tmp_path):
    write_image(tmp_path / "a.png", (10, 20, 30), size=(6, 4))
    images = load_image_files([tmp_path / "a.png"], image_size=4, channels=3)
    assert images.shape == (1, 4, 4, 3) and (to_uint8(images) == [10, 20, 30]).all()
    with pytest.raises(UserError, match=r"not found: .*nope.png; check the path"):
        load_image_files([tmp_path / "a.png", tmp_path / "nope.png"], image_size=4, channels=3)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(UserError, match="could not decode"):
        load_image_files([tmp_path / "bad.png"], image_size=4, channels=3)


# ----------------------------------------------------------------------------- CIFAR pickles


def write_cifar100(folder: Path, splits: dict[str, tuple[np.ndarray, list, list]],
                   fine_names: list[str], coarse_names: list[str]) -> Path:
    """The cifar-100-python layout: dicts with bytes keys, b"data" rows of R, G, B planes."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, fine, coarse) in splits.items():
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # NHWC -> N x (C*H*W)
        batch = {b"data": rows, b"fine_labels": fine, b"coarse_labels": coarse,
                 b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar100_pickles_fine_and_coarse_labels(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    folder = write_cifar100(tmp_path / "cifar-100-python", {
        "train": (train, [4, 0, 2, 1, 3], [1, 0, 1, 0, 1]), "test": (test, [2, 2, 0], [1, 1, 0])},
        ["apple", "bee", "cup", "dog", "eel"], ["things", "animals"])

    source = load_source(data_cfg(path=str(folder)), split="train")
    np.testing.assert_array_equal(source.images, train)  # planes -> NHWC exactly
    assert source.labels.dtype == np.int32 and source.labels.tolist() == [4, 0, 2, 1, 3]
    assert source.class_names == ["apple", "bee", "cup", "dog", "eel"]
    coarse = load_source(data_cfg(path=str(folder), label_mode="coarse"), split="test")
    np.testing.assert_array_equal(coarse.images, test)
    assert coarse.labels.tolist() == [1, 1, 0] and coarse.class_names == ["things", "animals"]
    batch = next(make_train_iterator(source, batch_size=5, image_size=32, channels=3, seed=0))
    assert batch["image"].shape == (5, 32, 32, 3)

    # the downloaded .tar.gz works as it is
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "cache"))
    assert load_source(data_cfg(path=str(archive)), split="test").labels.tolist() == [2, 2, 0]

    with pytest.raises(UserError, match="--config.data.label_mode to one of fine, coarse"):
        load_source(data_cfg(path=str(folder), label_mode="superclass"))
    with pytest.raises(UserError, match="only the splits 'train' and 'test'"):
        load_source(data_cfg(path=str(folder)), split="validation")


def test_cifar100_pickle_of_the_real_sample_images_keeps_their_labels(tmp_path):
    samples = sorted((REAL_MNIST.parent / "samples").glob("cifar100_*.png"))
    if not samples:
        pytest.skip(f"CIFAR-100 sample PNGs not found in {REAL_MNIST.parent / 'samples'}")
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in samples])
    fine = [int(p.stem.split("_")[2]) for p in samples]  # cifar100_<i>_<label>.png
    folder = write_cifar100(tmp_path / "cifar-100-python", {"test": (images, fine, [0] * 20)},
                            [f"class{i}" for i in range(100)], ["all"])
    source = load_source(data_cfg(path=str(folder)), split="test")
    assert source.labels.tolist() == fine and len(samples) == 20
    np.testing.assert_array_equal(source.images, images)
    batches = list(make_eval_iterator(source, batch_size=8, image_size=32, channels=3))
    assert labels(batches)[:20].tolist() == fine
    np.testing.assert_array_equal(to_uint8(np.concatenate([b["image"] for b in batches])[:20]),
                                  images)


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        rows = images.transpose(0, 3, 1, 2).reshape(2, -1)
        (folder / name).write_bytes(pickle.dumps({b"data": rows, b"labels": [i, 9 - i]}))
        expected.append((images, [i, 9 - i]))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"plane", b"car"]}))
    train = load_source(data_cfg(path=str(folder)), split="train")
    assert train.num_examples == 10 and train.labels.tolist()[:4] == [0, 9, 1, 8]
    np.testing.assert_array_equal(train.images[:2], expected[0][0])
    test = load_source(data_cfg(path=str(folder)), split="test")
    assert test.labels.tolist() == [5, 4] and test.class_names == ["plane", "car"]


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = write_cifar100(tmp_path / "c", {"train": (np.zeros((1, 32, 32, 3), np.uint8),
                                                       [0], [0])}, ["a"], ["b"])
    (folder / "train").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(UserError, match=r"could not read the CIFAR file .*refusing to load the "
                                        r"global .*system"):
        load_source(data_cfg(path=str(folder)))
    assert not (tmp_path / "pwned").exists()


def test_tfds_cifar100_coarse_labels(caplog):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        coarse = load_source(data_cfg(tfds_name="cifar100", label_mode="coarse"))
        fine = load_source(data_cfg(tfds_name="cifar100"))
    assert coarse.images.shape == (6, 32, 32, 3)
    assert len(coarse.class_names) == 20 and len(fine.class_names) == 100
    assert coarse.labels.max() < 20
    with pytest.raises(UserError, match="no 'coarse_label' feature.*label_mode to fine"):
        load_source(data_cfg(tfds_name="mnist", label_mode="coarse"))


def test_resize_crop_loads_larger_and_crops_random_windows():
    rng = np.random.RandomState(1)
    source = ImageSource(name="noise", images=rng.randint(0, 256, (8, 6, 6, 1), np.uint8),
                         paths=None, labels=np.arange(8, dtype=np.int32), class_names=None)
    kwargs = {"batch_size": 8, "image_size": 6, "channels": 1, "seed": 0}
    plain = take(make_train_iterator(source, **kwargs), 1)[0]
    jittered = take(make_train_iterator(source, augment="resize_crop", load_size=9, **kwargs),
                    1)[0]
    assert jittered["image"].shape == (8, 6, 6, 1)
    assert not np.allclose(jittered["image"], plain["image"])  # windows of a 9x9 resize
    again = take(make_train_iterator(source, augment="resize_crop", load_size=9, **kwargs), 1)[0]
    np.testing.assert_array_equal(again["image"], jittered["image"])  # seeded: resumable
    same = take(make_train_iterator(source, augment="resize_crop", load_size=6, **kwargs), 1)[0]
    np.testing.assert_array_equal(same["image"], plain["image"])  # nothing to crop
    with pytest.raises(UserError, match="load size 4 is smaller than the 6-pixel crop"):
        make_train_iterator(source, augment="resize_crop_flip", load_size=4, **kwargs)


# ----------------------------------------------------------------------------- unpaired domains


def _write_domains(root: Path, counts: dict[str, int]) -> None:
    for domain, n in counts.items():
        (root / domain).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / domain / f"{i}.png", (i * 10, 0, 0))


def test_domain_subfolders_are_splits(tmp_path):
    _write_domains(tmp_path / "horse2zebra", {"trainA": 3, "trainB": 2, "testA": 1, "testB": 1})
    cfg = data_cfg(path=str(tmp_path))
    counts = {s: load_source(cfg, split=s).num_examples
              for s in ("trainA", "trainB", "testA", "testB")}
    assert counts == {"trainA": 3, "trainB": 2, "testA": 1, "testB": 1}
    train_a = load_source(cfg, split="trainA")
    assert train_a.labels is None and all("/trainA/" in p for p in train_a.paths)


def test_domain_archive_and_domain_folder_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "cache"))
    _write_domains(tmp_path / "apple2orange", {"trainA": 2, "trainB": 4})
    archive = tmp_path / "apple2orange.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "apple2orange", arcname="apple2orange")
    assert load_source(data_cfg(path=str(archive)), split="trainB").num_examples == 4
    # data.path naming the domain folder itself, or a flat folder: all of it.
    own = data_cfg(path=str(tmp_path / "apple2orange" / "trainA"))
    assert load_source(own, split="trainA").num_examples == 2


def test_other_subfolder_names_still_split_by_aliases_or_labels(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / "data" / split / "cat" / "0.png", 1, mode="L")
        write_image(tmp_path / "data" / split / "dog" / "0.png", 1, mode="L")
    validation = load_source(data_cfg(path=str(tmp_path / "data")), split="validation")
    assert validation.class_names == ["cat", "dog"] and validation.labels.tolist() == [0, 1]
    whole = load_source(data_cfg(path=str(tmp_path / "data" / "train")), split="test")
    assert whole.num_examples == 2  # class folders, no split folders: all of it, as before


def test_missing_domain_folder_lists_the_subfolders(tmp_path):
    _write_domains(tmp_path, {"trainA": 1, "trainB": 1})
    with pytest.raises(UserError, match=r"no 'testA' folder \(its subfolders: trainA, trainB\); "
                                        r"set the split"):
        load_source(data_cfg(path=str(tmp_path)), split="testA")


def test_empty_domain_folder_is_named(tmp_path):
    _write_domains(tmp_path, {"trainA": 1, "trainB": 0})
    (tmp_path / "trainB" / "notes.txt").write_text("no images")
    with pytest.raises(UserError, match=r"'trainB' folder of .* has no images; add images to it "
                                        r"or set the split to one of trainA"):
        load_source(data_cfg(path=str(tmp_path)), split="trainB")
