"""Input data: reading sources (TFDS, idx files, image folders, archives) and tf.data batches.

    source = load_source(config.data, split="train")
    batches = make_train_iterator(source, batch_size=..., image_size=..., channels=..., seed=...)
"""

from common_jax.data.pipeline import make_train_iterator
from common_jax.data.sources import ImageSource, load_source

__all__ = ["ImageSource", "load_source", "make_train_iterator"]
