"""One of our trained classifiers as the judge of generated small images.

Inception features, computed on 28x28 digits blown up to 299x299, say little about digits; a
classifier trained on the GAN's own data says more. A classifier run (a `classifiers_jax`
workdir holding a checkpoint, e.g. an MNIST or Fashion-MNIST classifier) serves as:
- the feature network of FID and KID: its penultimate features, the input of its head layer,
  which the models record with ``self.sow("intermediates", "features", x)``;
- the judge of mode coverage: the class histogram of the samples under its predictions, the
  number of classes holding at least a threshold share of them, and KL(sample class
  distribution || data class distribution), the data's being the judge's predictions on the
  real images (default) or their labels.

Judge FIDs are comparable only between scores with the same protocol (sample counts, reference
data set and split, the judge "judge:<workdir>" and the hash of its weights), never with
Inception FIDs. Images reach the judge at the GAN's size, not resized, so the judge's image
size and channels must match the GAN's. Generated images are first rounded to the 256 uint8
levels, as saved PNGs and real data are.

Feature extraction runs data-parallel over the local devices (`gan_metrics.iter_features`);
statistics and scores are computed on the host in float64.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from common_jax.errors import UserError
from common_jax.metrics import class_coverage, frechet_distance
from common_jax.metrics import inception as inception_lib
from common_jax.metrics.gan_metrics import (
    StreamingStats,
    iter_features,
    kernel_inception_distance,
    take,
)

NAME_PREFIX = "judge:"
RESIZE = "none"  # images reach the judge at their own size
CLASS_REFERENCES = ("judge", "labels")
TRAIN_A_JUDGE = "python train.py --config classifiers_jax/configs/mnist.py --workdir"


def judge_preprocess(images) -> jax.Array:
    """uint8, or float in [-1, 1] -> float32 in [-1, 1] on the 256 uint8 levels.

    Real images from the data pipeline (u / 127.5 - 1) keep their values; generated ones are
    rounded as a saved PNG would be (`inception.to_pixels`).
    """
    return inception_lib.to_pixels(images) / 127.5 - 1.0


@dataclasses.dataclass(frozen=True)
class ClassifierOutputs:
    """A Flax classifier as a feature network: ``apply(variables, images)`` -> {"features"
    [B, D] float32, "logits" [B, K] float32}.

    The classifier must sow its penultimate features into "intermediates" under "features".
    A frozen dataclass of a Flax module is hashable, so the compiled forward pass is cached
    across calls (`gan_metrics.iter_features`).
    """

    classifier: Any

    def apply(self, variables, images):
        logits, sown = self.classifier.apply(variables, images, train=False,
                                             mutable=["intermediates"])
        features = sown["intermediates"]["features"][-1]
        return {"features": features.reshape(features.shape[0], -1).astype(jnp.float32),
                "logits": logits.astype(jnp.float32)}


@dataclasses.dataclass(frozen=True, eq=False)
class Judge:
    """A classifier as feature network and class judge, plus what makes its scores comparable."""

    network: Any  # apply(variables, images) -> {"features", "logits"}, e.g. ClassifierOutputs
    variables: Any
    name: str  # "judge:<workdir>"
    weights_hash: str
    image_size: int
    channels: int
    num_classes: int
    step: int | None = None  # the checkpoint's training step
    class_names: tuple[str, ...] = ()

    def check_images(self, image_size: int, channels: int, what: str = "the GAN",
                     none: str = "give no judge") -> None:
        """Refuses images of another size or channel count than the judge was trained on;
        `none` says how to do without a judge."""
        if (image_size, channels) != (self.image_size, self.channels):
            raise UserError(
                f"the judge {self.name[len(NAME_PREFIX):]} classifies {self.image_size}x"
                f"{self.image_size}x{self.channels} images but {what} makes {image_size}x"
                f"{image_size}x{channels} ones; use a judge trained on the same data (same "
                f"image_size and channels), or {none}")

    def outputs(self, images: Iterable | np.ndarray, *, batch_size: int,
                devices: Sequence | None = None) -> Iterator[dict[str, np.ndarray]]:
        """{"features" [n, D], "predicted" [n]} for each batch of `batch_size` images."""
        for out in iter_features(self.network, self.variables, self._checked(images),
                                 batch_size=batch_size, devices=devices,
                                 preprocess=judge_preprocess):
            yield {"features": out["features"], "predicted": out["logits"].argmax(axis=-1)}

    def _checked(self, images: Iterable | np.ndarray) -> Iterator[np.ndarray]:
        if isinstance(images, (np.ndarray, jax.Array)):
            images = [images]
        for chunk in images:
            chunk = np.asarray(chunk)
            if chunk.ndim != 4:
                raise ValueError(f"images must be [B, H, W, C]; got shape {chunk.shape}")
            self.check_images(chunk.shape[1], chunk.shape[3], "the image stream")
            if chunk.shape[1] != chunk.shape[2]:
                raise ValueError(f"the judge takes square images; got shape {chunk.shape}")
            yield chunk


def classifier_judge(classifier, variables, *, name: str, image_size: int, channels: int,
                     num_classes: int, step: int | None = None,
                     class_names: Sequence[str] = ()) -> Judge:
    """A `Judge` from a Flax classifier that sows its penultimate features, and its variables."""
    network = ClassifierOutputs(classifier)
    probe = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    try:
        shapes = jax.eval_shape(network.apply, variables, probe)
    except KeyError:
        raise UserError(
            f"the classifier of {name} does not record its penultimate features; its model "
            "needs self.sow(\"intermediates\", \"features\", x) right before the head layer "
            "(as classifiers_jax.models.cnn has)") from None
    if shapes["logits"].shape[-1] != num_classes:
        raise ValueError(f"{name}: {shapes['logits'].shape[-1]} logits for {num_classes} classes")
    return Judge(network, variables, name, inception_lib.weights_hash(variables), image_size,
                 channels, num_classes, step, tuple(class_names))


def _trainer_of(config):
    # By module path, as train.py does: common_jax imports no model package.
    return importlib.import_module(config.trainer)


def load_judge(workdir: str | Path) -> Judge:
    """The classifier of the latest checkpoint in a classifier run's workdir, as a `Judge`.

    Loaded like `train.py classify` loads it (`checkpoint.restore_for_inference`); its name is
    "judge:<absolute workdir>".
    """
    from common_jax.checkpoint import restore_for_inference

    path = Path(workdir).expanduser().resolve()
    saved = path / "checkpoints"
    if not saved.is_dir() or not any(p.name.isdigit() for p in saved.iterdir()):
        raise UserError(f"the judge workdir {workdir} holds no checkpoint; train a classifier "
                        f"there first ({TRAIN_A_JUDGE} {workdir}) or give the workdir of a "
                        "classifier run")
    try:
        config, state, trainer = restore_for_inference(path, _trainer_of)
    except UserError as error:
        raise UserError(f"judge workdir {workdir}: {error}") from None
    if not hasattr(trainer, "inference_network"):
        raise UserError(f"the judge workdir {workdir} holds a {config.trainer} run, not a "
                        f"classifier; give the workdir of a classifier run ({TRAIN_A_JUDGE} DIR)")
    classifier, variables = trainer.inference_network(state, config)
    m = config.model
    return classifier_judge(classifier, variables, name=NAME_PREFIX + str(path),
                            image_size=m.image_size, channels=m.channels,
                            num_classes=m.num_classes, step=int(state.step),
                            class_names=config.data.get("class_names") or ())


# ----------------------------------------------------------------------------------------------
# Reference statistics and scores


@dataclasses.dataclass
class JudgeReference:
    """Real images as the judge sees them: feature statistics, features, class distribution."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray  # [n, D] float32, for KID
    class_counts: np.ndarray  # [num_classes]: the data's class distribution
    class_reference: str  # "judge" (its predictions) or "labels"
    dataset: str
    split: str
    num_samples: int
    network: str
    weights_hash: str


def _split_stream(batches: Iterable, labels: list) -> Iterator[np.ndarray]:
    """Images of a stream of arrays or {"image", "label"} dicts; labels are appended to
    `labels` as their images pass."""
    if isinstance(batches, (np.ndarray, jax.Array)):
        batches = [batches]
    for batch in batches:
        if isinstance(batch, dict):
            labels.append(np.asarray(batch["label"]))
            yield batch["image"]
        else:
            yield batch


def _collect(judge: Judge, images: Iterable, num: int, *, batch_size: int,
             devices) -> tuple[StreamingStats, np.ndarray, np.ndarray]:
    """Streams the first `num` images through the judge: statistics, features, predictions."""
    stats, features, predicted = StreamingStats(), [], []
    for out in judge.outputs(take(images, num), batch_size=batch_size, devices=devices):
        stats.update(out["features"])
        features.append(out["features"])
        predicted.append(out["predicted"])
    if stats.count < num:
        raise UserError(f"only {stats.count} images were given where {num} are needed; lower "
                        "the sample count or provide more images")
    return stats, np.concatenate(features), np.concatenate(predicted)


def _label_counts(labels: list, num: int, num_classes: int) -> np.ndarray:
    labels = np.concatenate(labels)[:num] if labels else np.zeros(0, np.int64)
    if len(labels) < num or (labels < 0).any():
        raise UserError("the reference images have no labels; set the class reference to "
                        "\"judge\" (the judge's predictions on them)")
    if labels.max() >= num_classes:
        raise UserError(f"the reference images have labels up to {labels.max()} but the judge "
                        f"knows {num_classes} classes; use a judge trained on this data")
    return np.bincount(labels, minlength=num_classes)


def judge_reference(judge: Judge, batches: Iterable, *, dataset: str, split: str,
                    num_samples: int, class_reference: str = "judge", batch_size: int = 250,
                    devices: Sequence | None = None) -> JudgeReference:
    """The judge's view of the first `num_samples` real images of a stream.

    `batches`: arrays of images (uint8 or [-1, 1]) or {"image", "label"} dicts (labels are
    needed for ``class_reference="labels"``). The class distribution is the histogram of the
    judge's predictions on these images ("judge": the judge's own biases then cancel in the
    KL) or of their labels ("labels").
    """
    if class_reference not in CLASS_REFERENCES:
        raise UserError(f"unknown class reference '{class_reference}'; use one of "
                        f"{', '.join(CLASS_REFERENCES)}")
    labels: list = []
    stats, features, predicted = _collect(judge, _split_stream(batches, labels), num_samples,
                                          batch_size=batch_size, devices=devices)
    if class_reference == "labels":
        counts = _label_counts(labels, num_samples, judge.num_classes)
    else:
        counts = np.bincount(predicted, minlength=judge.num_classes)
    return JudgeReference(*stats.statistics(), features, counts, class_reference, dataset,
                          split, stats.count, judge.name, judge.weights_hash)


def score(judge: Judge, fake_images: Iterable, reference: JudgeReference, *,
          num_samples: int, batch_size: int = 250, devices: Sequence | None = None,
          kid_subsets: int = 100, kid_subset_size: int = 1000,
          coverage_threshold: float = 0.01, seed: int = 0) -> dict[str, Any]:
    """Judge FID, KID and mode coverage of `num_samples` generated images, with the protocol.

    Returns "fid", "kid_mean", "kid_std", "classes_covered" (classes holding at least
    `coverage_threshold` of the samples; the threshold is reported too), "num_classes",
    "class_kl" (KL(samples' class distribution || the reference's)), "class_histogram" and
    "protocol".
    """
    if (reference.network, reference.weights_hash) != (judge.name, judge.weights_hash):
        raise UserError(f"the reference was computed with {reference.network} (weights "
                        f"{reference.weights_hash}), not with {judge.name} (weights "
                        f"{judge.weights_hash}); recompute it with judge_reference()")
    stats, features, predicted = _collect(judge, fake_images, num_samples,
                                          batch_size=batch_size, devices=devices)
    kid_mean, kid_std = kernel_inception_distance(
        reference.features, features, num_subsets=kid_subsets, subset_size=kid_subset_size,
        seed=seed)
    coverage = class_coverage(predicted, judge.num_classes, reference.class_counts,
                              threshold=coverage_threshold)
    return {
        "fid": frechet_distance(*stats.statistics(), reference.mu, reference.sigma),
        "kid_mean": kid_mean, "kid_std": kid_std,
        "classes_covered": coverage["classes_covered"], "num_classes": judge.num_classes,
        "coverage_threshold": coverage["coverage_threshold"],
        "class_kl": coverage["kl_to_data"], "class_histogram": coverage["histogram"],
        "protocol": protocol(judge, reference, n_fake=stats.count),
    }


def protocol(judge: Judge, reference: JudgeReference, *, n_fake: int) -> dict[str, Any]:
    """What a judge score depends on besides the generator (the keys of Inception's protocol,
    plus the judge's checkpoint step and where the data's class distribution came from)."""
    return {"n_real": reference.num_samples, "n_fake": int(n_fake),
            "reference_dataset": reference.dataset, "reference_split": reference.split,
            "resize": RESIZE, "network": judge.name, "weights_hash": judge.weights_hash,
            "judge_step": judge.step, "class_reference": reference.class_reference}
