"""Input data: reading sources (TFDS, idx files, CIFAR pickles, image folders, archives) and
tf.data batches.

    source = load_source(config.data, split="train")
    batches = make_train_iterator(source, batch_size=..., image_size=..., channels=..., seed=...)
    for batch in make_eval_iterator(test_source, batch_size=..., image_size=..., channels=...):
        ...  # every example once; padded rows have batch["mask"] == 0
"""

from common_jax.data.pipeline import (
    AUGMENTATIONS,
    load_image_files,
    make_eval_iterator,
    make_train_iterator,
    preprocess,
)
from common_jax.data.sources import ImageSource, load_source

__all__ = [
    "AUGMENTATIONS", "ImageSource", "load_image_files", "load_source", "make_eval_iterator",
    "make_train_iterator", "preprocess",
]
