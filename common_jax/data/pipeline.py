"""The tf.data pipelines: shuffled, resumable, sharded training batches of preprocessed images,
and padded evaluation batches that cover a split exactly once.

The training pipeline runs over example *indices*, not images: shuffling and skipping touch only
integers, and each index is turned into an image (gathered from memory or read from a file)
after the order is fixed. Each epoch's order is a stateless permutation seeded by
``(seed, epoch)``, so it depends only on the arguments: two iterators built alike yield the same
batches, and resuming at batch ``k`` starts straight at the right epoch instead of replaying
every earlier one. Augmentation (``augment="cifar"``: random crop of the image padded by 4
reflected pixels, and a random horizontal flip) is seeded the same way, by ``(seed, position of
the example in the stream)``, so it is resumable too.

In a job of several processes every process follows the same global order and loads only its
rows of each global batch (process p of n: rows p*b to (p+1)*b of the n*b), so n processes feed
the devices exactly the batches one process would, augmentation included.

Images come out as float32 in [-1, 1] with the configured size and channel count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from common_jax.data.sources import ImageSource
from common_jax.errors import UserError

log = logging.getLogger(__name__)

try:
    # TF must never take GPU memory JAX needs: it only reads and decodes images here.
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
    # Devices were already initialised by an earlier TF user; nothing more can be done here.
    log.warning("could not hide GPUs from TensorFlow; it may reserve GPU memory")

_MAX_SEED = 2**63  # stateless ops take int64 seeds
# Augmentations by name: (random crop after padding, random horizontal flip).
AUGMENTATIONS = {"none": (False, False), "flip": (False, True), "crop": (True, False),
                 "cifar": (True, True), "resize_crop": (True, False),
                 "resize_crop_flip": (True, True)}
# Augmentations that load the image at `load_size` and crop a random image_size square of it
# (the pix2pix/CycleGAN "resize and crop" jitter); the others pad by CROP_PADDING instead.
RESIZE_CROPS = ("resize_crop", "resize_crop_flip")
CROP_PADDING = 4  # pixels added on each side before the random crop (the usual CIFAR setting)
_AUGMENT_STREAM = 0x5EED  # folded into the augmentation seed: its numbers differ from the shuffle's


def make_train_iterator(
    source: ImageSource,
    *,
    batch_size: int,
    image_size: int,
    channels: int,
    seed: int,
    start_batch: int = 0,
    start_example: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    augment: str = "none",
    load_size: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches {"image": float32 [B,S,S,C] in [-1, 1], "label": int32 [B]}.

    `batch_size` is per process: process `i` of `n` yields rows ``i*B .. (i+1)*B`` of every
    global batch of ``n*B`` examples, loading only those. Labels are -1 when the source has
    none. ``start_batch=k`` yields exactly batches k, k+1, ... of a fresh iterator with the same
    arguments, which is how training resumes; ``start_example=m`` starts after the first m
    examples of the global stream instead (streams whose batch size changes between training
    stages resume by examples, not batches).
    `augment` is one of `AUGMENTATIONS`: "cifar" pads by `CROP_PADDING` reflected pixels, crops
    back to the image size at a random offset and flips half the images left-right;
    "resize_crop(_flip)" loads images at `load_size` (>= image_size) and crops a random
    image_size square (then flips half of them).
    """
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation '{augment}'; set --config.data.augment to one of "
                        f"{', '.join(AUGMENTATIONS)}")
    resize_crop = augment in RESIZE_CROPS
    load_size = load_size or image_size
    if resize_crop and load_size < image_size:
        raise UserError(f"the load size {load_size} is smaller than the {image_size}-pixel crop; "
                        f"set the load size (e.g. --config.data.load_size) to {image_size} or "
                        "more")
    _validate(source, batch_size=batch_size, image_size=image_size, channels=channels,
              start_batch=start_batch, process_index=process_index,
              process_count=process_count)
    if start_example < 0:
        raise ValueError(f"start_example must be >= 0, got {start_example}")
    global_batch = batch_size * process_count
    indices = _shuffled_indices(num_examples=source.num_examples, seed=seed,
                                skip=start_batch * global_batch + start_example)
    if process_count > 1:
        indices = _rows_of_process(indices, global_batch=global_batch, batch_size=batch_size,
                                   process_index=process_index)
    load = _example_loader(source, image_size=load_size if resize_crop else image_size,
                           channels=channels)
    crop, flip = AUGMENTATIONS[augment]
    stream_seed = seed % _MAX_SEED

    def load_and_augment(position: tf.Tensor, index: tf.Tensor) -> dict[str, tf.Tensor]:
        example = load(index)
        if crop or flip:
            key = _augment_key(stream_seed, position)
            example["image"] = _augment(example["image"], key, crop=crop, flip=flip,
                                        crop_size=image_size if resize_crop else None)
        return example

    ds = (
        indices.map(load_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return ds.as_numpy_iterator()


def _rows_of_process(indices: tf.data.Dataset, *, global_batch: int, batch_size: int,
                     process_index: int) -> tf.data.Dataset:
    """This process's rows of every global batch of (position, index) pairs."""
    first = process_index * batch_size

    def rows(positions: tf.Tensor, order: tf.Tensor):
        return positions[first:first + batch_size], order[first:first + batch_size]

    return indices.batch(global_batch, drop_remainder=True).map(rows).unbatch()


def _validate(
    source: ImageSource, *, batch_size: int, image_size: int, channels: int,
    start_batch: int, process_index: int, process_count: int,
) -> None:
    """Checks the arguments."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    if source.images is None and source.paths is None:
        raise ValueError(f"source '{source.name}' has neither images nor paths")
    _validate_image_shape(image_size, channels)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}; set --config.batch_size")
    global_batch = batch_size * process_count
    if global_batch > source.num_examples:
        # config.batch_size is the global batch: every process reads batch_size of it.
        detail = (f" ({batch_size} per process x {process_count} processes)"
                  if process_count > 1 else "")
        raise UserError(
            f"the batch of {global_batch} examples{detail} is larger than the "
            f"{source.num_examples} examples of '{source.name}'; lower --config.batch_size to "
            f"at most {source.num_examples} or use more data"
        )


def _validate_image_shape(image_size: int, channels: int) -> None:
    if image_size < 1:
        raise UserError(
            f"image size must be at least 1 pixel, got {image_size}; set "
            "--config.model.image_size to a positive number"
        )
    if channels not in (1, 3):
        raise UserError(
            f"channels must be 1 (gray) or 3 (RGB), got {channels}; set "
            "--config.model.channels to 1 or 3"
        )


def _shuffled_indices(*, num_examples: int, seed: int, skip: int) -> tf.data.Dataset:
    """Endless (position, example index) pairs, each epoch a fresh permutation.

    Equivalent to range -> shuffle(all) -> repeat -> skip, except that the permutation of epoch
    `e` is a pure function of (seed, e): skipping whole epochs costs nothing, and TF's global
    seed (which `shuffle` would mix in) cannot change the order. The position counts the
    examples of the stream since the start (skipped ones included), so it names one draw of one
    example, e.g. for augmentation.
    """
    first_epoch, offset = divmod(skip, num_examples)
    seed = seed % _MAX_SEED

    def epoch_indices(epoch: tf.Tensor) -> tf.data.Dataset:
        examples = tf.range(num_examples, dtype=tf.int64)
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(examples, seed=key)
        positions = epoch * num_examples + tf.range(num_examples, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((positions, order))

    epochs = tf.data.Dataset.counter(start=first_epoch, dtype=tf.int64)
    return epochs.flat_map(epoch_indices).skip(offset)


def _augment_key(seed: int, position: tf.Tensor) -> tf.Tensor:
    """The stateless seed of one example draw: (seed, position in the stream), then a stream
    id."""
    key = tf.stack([tf.constant(seed, tf.int64), position])
    return tf.random.experimental.stateless_fold_in(key, _AUGMENT_STREAM)


def _augment(image: tf.Tensor, key: tf.Tensor, *, crop: bool, flip: bool,
             crop_size: int | None = None) -> tf.Tensor:
    """A random crop and/or a random left-right flip. The crop is a `crop_size` square of the
    image when given, else an image-sized window of the image padded by reflection."""
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    if crop and crop_size is not None:
        size = [crop_size, crop_size, image.shape[-1]]
        image = tf.image.stateless_random_crop(image, size, seed=crop_key)
    elif crop:
        # Reflection (not zeros) keeps the border statistics of real images.
        size = image.shape
        pad = min(CROP_PADDING, size[0] - 1, size[1] - 1)  # REFLECT needs pad < size
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(padded, size, seed=crop_key)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
    return image


def make_eval_iterator(
    source: ImageSource,
    *,
    batch_size: int,
    image_size: int,
    channels: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches that cover this process's shard of `source` exactly once, in order.

    Each batch is {"image", "label", "mask"} with `batch_size` rows: the last one is padded
    with copies of a real example whose "mask" is 0.0 (1.0 for real rows), so every batch has
    the same shape (one compilation) and metrics weighted by the mask count each example once.
    Every process yields the same number of batches (the largest shard's), as a collective
    evaluation step needs.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size < 1:
        raise UserError(f"evaluation batch size must be at least 1, got {batch_size}; set "
                        "--config.eval_batch_size")
    if source.num_examples < 1:
        raise UserError(f"'{source.name}' has no examples to evaluate on; set "
                        "--config.data.eval_split to a split with data")
    _validate_image_shape(image_size, channels)
    shard = np.arange(process_index, source.num_examples, process_count, dtype=np.int64)
    largest_shard = math.ceil(source.num_examples / process_count)
    num_padded = math.ceil(largest_shard / batch_size) * batch_size - len(shard)
    filler = shard[0] if len(shard) else 0  # any real example: its result is masked out
    indices = np.concatenate([shard, np.full(num_padded, filler, np.int64)])
    mask = np.concatenate([np.ones(len(shard), np.float32), np.zeros(num_padded, np.float32)])

    load = _example_loader(source, image_size=image_size, channels=channels)

    def load_masked(index: tf.Tensor, weight: tf.Tensor) -> dict[str, tf.Tensor]:
        return {**load(index), "mask": weight}

    ds = (
        tf.data.Dataset.from_tensor_slices((indices, mask))
        .map(load_masked, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return ds.as_numpy_iterator()


def load_image_files(paths: Sequence[str | Path], *, image_size: int,
                     channels: int) -> np.ndarray:
    """Image files -> float32 [N, S, S, channels] in [-1, 1], preprocessed as in training."""
    _validate_image_shape(image_size, channels)
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"image file{'s' if len(missing) > 1 else ''} not found: "
                        f"{', '.join(missing)}; check the path{'s' if len(missing) > 1 else ''}")
    images = []
    for path in paths:
        try:
            image = _decode_file(tf.constant(str(path)))
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
            raise UserError(f"could not decode '{path}' as an image ({e.message.splitlines()[0]}); "
                            "use a PNG, JPEG, BMP or GIF file") from e
        images.append(preprocess(image, image_size=image_size, channels=channels).numpy())
    return np.stack(images) if images else np.zeros((0, image_size, image_size, channels),
                                                    np.float32)


def _example_loader(source: ImageSource, *, image_size: int, channels: int):
    """A function index -> {"image", "label"} for `tf.data.Dataset.map`."""
    get_image = _image_getter(source)
    get_label = _label_getter(source)

    def load(i: tf.Tensor) -> dict[str, tf.Tensor]:
        image = preprocess(get_image(i), image_size=image_size, channels=channels)
        return {"image": image, "label": get_label(i)}

    return load


def _image_getter(source: ImageSource):
    if source.images is None:
        paths = tf.constant(source.paths)
        return lambda i: _decode_file(tf.gather(paths, i))
    # An eager tensor captured by the map function is passed by reference, not embedded in the
    # graph, so arrays over 2 GB work (checked with 2.2 GB); the array must fit in host RAM.
    images = tf.convert_to_tensor(source.images)
    return lambda i: tf.gather(images, i)


def _label_getter(source: ImageSource):
    if source.labels is None:
        return lambda i: tf.constant(-1, tf.int32)
    labels = tf.convert_to_tensor(np.asarray(source.labels, np.int32))
    return lambda i: tf.gather(labels, i)


def _decode_file(path: tf.Tensor) -> tf.Tensor:
    data = tf.io.read_file(path)
    # channels=0 keeps the file's own channels; `preprocess` converts them. Only an animation's
    # first frame is used.
    return tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)


def preprocess(image: tf.Tensor, *, image_size: int, channels: int) -> tf.Tensor:
    """uint8 [H,W,C] with any C in 1..4 -> float32 [S,S,channels] in [-1, 1]."""
    x = tf.cast(image, tf.float32)
    x = _convert_channels(x, channels)
    x = _center_crop_square(x)
    x = _resize(x, image_size)
    x = tf.clip_by_value(x / 127.5 - 1.0, -1.0, 1.0)
    x.set_shape([image_size, image_size, channels])
    return x


def _convert_channels(x: tf.Tensor, channels: int) -> tf.Tensor:
    """Drops alpha, then tiles gray to RGB or averages RGB to gray as needed.

    Shapes known when the graph is built (in-memory arrays) are handled in Python: building
    both branches of a `tf.cond` would fail, e.g. rgb_to_grayscale on a 1-channel image.
    """
    have = x.shape[-1]
    if have is not None:
        if have in (2, 4):
            x, have = x[..., : have - 1], have - 1
        if have == channels:
            return x
        return tf.tile(x, [1, 1, 3]) if channels == 3 else tf.image.rgb_to_grayscale(x)

    have = tf.shape(x)[-1]
    # 2 (gray + alpha) -> 1 and 4 (RGBA) -> 3; 1 and 3 stay.
    x = x[..., : tf.where(have % 2 == 0, have - 1, have)]
    if channels == 3:
        return tf.cond(tf.shape(x)[-1] == 1, lambda: tf.tile(x, [1, 1, 3]), lambda: x)
    return tf.cond(tf.shape(x)[-1] == 3, lambda: tf.image.rgb_to_grayscale(x), lambda: x)


def _center_crop_square(x: tf.Tensor) -> tf.Tensor:
    height, width = x.shape[0], x.shape[1]
    if height is not None and height == width:
        return x
    shape = tf.shape(x)
    side = tf.minimum(shape[0], shape[1])
    return tf.image.crop_to_bounding_box(
        x, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side
    )


def _resize(x: tf.Tensor, size: int) -> tf.Tensor:
    """Square `x` to size x size; antialiasing keeps downscaled images free of aliasing."""
    if x.shape[0] == size and x.shape[1] == size:
        return x

    def resize() -> tf.Tensor:
        return tf.image.resize(x, [size, size], antialias=True)

    if x.shape[0] is not None:
        return resize()
    # Files of the right size skip the resize: it costs time and blurs nothing useful.
    return tf.cond(tf.shape(x)[0] == size, lambda: x, resize)
