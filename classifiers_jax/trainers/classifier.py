"""CNN classifier training: the `ClassifierState` pytree, the pure train and evaluation steps,
evaluation of a whole split, prediction, and the entry point.

The train step runs per device with the named axis `common_jax.parallel.AXIS`: a forward pass
with batch statistics (batch norm averages them over the axis), cross-entropy with optional
label smoothing, gradients averaged over the axis, one optimizer update. N devices compute what
one device computes on the whole batch, dropout included (`common_jax.dropout.BatchDropout`).

Evaluation reads the whole test split once in padded batches split over the devices; padded rows
have mask 0, and the per-device sums (loss, top-1, top-5, confusion matrix) are added with psum.
It writes eval_loss/eval_top1/eval_top5 every ``eval_every`` steps and at the end; the final one
also puts per-class accuracy and the confusion matrix into summary.json and draws
confusion_matrix.png.

A config's `population` section trains K classifiers side by side (`common_jax.population`):
the step is vmapped over the members, the keys in POPULATION_KEYS may differ per member, and
evaluation reports every member, their ensemble (the mean of their softmax) and the best member
by test top-1.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from classifiers_jax.models import resnet
from classifiers_jax.models.cnn import CNN, HEADS, BasicCNN, FastCIFARNet
from common_jax import activations, loop, optim, parallel, population
from common_jax import data as data_lib
from common_jax.config_utils import COMPUTE_DTYPES, compute_dtype
from common_jax.errors import UserError
from common_jax.evaluate import SplitEvaluator
from common_jax.parallel import DataParallel
from common_jax.state import NetState, apply_gradients, create_net_state

log = logging.getLogger(__name__)

ARCHS = ("basic", "cnn", "fast", "resnet50")
OPTIMIZERS, SCHEDULES = optim.OPTIMIZERS, optim.SCHEDULES
TOP_K = 5
# Every enumerated option -> its valid values, taken from the constants the code checks against
# so that they cannot drift apart; train.py and the training loop refuse other values at
# start-up (common_jax.config_utils.check_choices) instead of after the data is loaded.
CONFIG_CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": ARCHS,
    "model.activation": activations.ACTIVATIONS + tuple(activations.ALIASES),
    "model.head": HEADS,
    "model.dtype": tuple(COMPUTE_DTYPES),
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
    "data.augment": tuple(data_lib.AUGMENTATIONS),
    "data.label_mode": data_lib.sources.LABEL_MODES,
    "parallel": parallel.MODES,
}
# Settings that may change when a run resumes: they change how the network is evaluated or the
# precision it computes in (the state stays float32), not what it has learnt.
RESUMABLE = frozenset({"eval_every", "eval_batch_size", "tta_flip", "tta_translate",
                       "model.dtype"})
# Settings a population (`common_jax.population`) may give each member its own value of: the
# step reads them as traced scalars, so one compiled step serves every member.
POPULATION_KEYS = ("optimizer.lr", "optimizer.b1", "optimizer.b2", "loss.label_smoothing")


@flax.struct.dataclass
class ClassifierState:
    """Everything a classifier run needs to continue: the network, the step and the key."""

    net: NetState
    step: jax.Array  # int32 scalar: steps completed
    key: jax.Array  # raw uint32 PRNG key; each step folds in its step number (dropout)


# ----------------------------------------------------------------------------- model, optimizer


def make_model(config: ml_collections.ConfigDict, axis_name: str | None = None):
    """The network `config.model.arch` names (axis_name syncs batch norm across devices)."""
    m = config.model
    if m.arch not in ARCHS:
        raise UserError(f"unknown model '{m.arch}'; set --config.model.arch to one of "
                        f"{', '.join(ARCHS)}")
    dtype = compute_dtype(m)
    if m.arch == "resnet50":
        # Inputs stay in [-1, 1]; the model turns them into what its weights were trained on.
        return resnet.ResNet50(num_classes=m.num_classes or None,
                               layout=m.get("layout", "keras"),
                               preprocess=m.get("preprocess", "caffe"), axis_name=axis_name,
                               dtype=dtype)
    common = {"num_classes": m.num_classes, "channels": m.channels, "width": m.width,
              "activation": m.activation}
    if m.arch == "basic":
        return BasicCNN(kernel_size=m.kernel_size, hidden=m.hidden, dtype=dtype, **common)
    if m.arch == "fast":
        return FastCIFARNet(axis_name=axis_name, dtype=dtype, **common)
    return CNN(depth=m.depth, convs_per_stage=m.convs_per_stage, batch_norm=m.batch_norm,
               dropout=m.dropout, head=m.head, hidden=m.hidden, axis_name=axis_name,
               dtype=dtype, **common)


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate per step: constant, cosine (with warmup), a linear one-cycle, or any other
    schedule of `common_jax.optim.SCHEDULES`."""
    lr = config.optimizer.lr
    if not isinstance(lr, jax.Array):
        return optim.make_schedule(config.optimizer, config.num_steps)
    # A population member's traced learning rate: optax checks a schedule's peak in Python,
    # which a traced value cannot answer. Every schedule here is linear in its peak, so the
    # schedule of peak 1 scaled by the member's rate is the same schedule.
    unit = ml_collections.ConfigDict({**config.optimizer.to_dict(), "lr": 1.0})
    schedule = optim.make_schedule(unit, config.num_steps)
    return lambda step: lr * schedule(step)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov; L2 weight decay) or Adam (L2) or AdamW (decoupled decay), with
    the optional frozen parameters and learning-rate multipliers of `common_jax.optim`."""
    if isinstance(config.optimizer.lr, jax.Array):  # the same optimizer state either way
        return optim.make_optimizer(config.optimizer, config.num_steps,
                                    learning_rate=make_schedule(config))
    return optim.make_optimizer(config.optimizer, config.num_steps)


def create_state(config: ml_collections.ConfigDict) -> ClassifierState:
    """A fresh state, deterministic from ``config.seed`` (and the pretrained weights, if any);
    a population: every member's, from its own seed, stacked (`common_jax.population`)."""
    if population.enabled(config):
        return population.create_state(config, create_state)
    key_init, key_train = jax.random.split(jax.random.PRNGKey(config.seed))
    m = config.model
    images = jnp.zeros((1, m.image_size, m.image_size, m.channels))
    variables = make_model(config).init(key_init, images, train=False)
    if m.get("pretrained", False):
        variables = with_pretrained(variables, config)
    return ClassifierState(net=create_net_state(variables, make_optimizer(config)),
                           step=jnp.zeros((), jnp.int32), key=key_train)


def with_pretrained(variables: dict, config: ml_collections.ConfigDict) -> dict:
    """`variables` with the backbone of ``config.model.weights`` (ImageNet ResNet50) merged in.

    The head is new whenever its class count differs from the weights' (CIFAR-10's 10 classes
    against ImageNet's 1000): it keeps its fresh initialisation. Anything else that does not
    fit stops with one line, before training, and nothing is half-merged.
    """
    from classifiers_jax import resnet_weights
    from common_jax import pretrained

    if config.model.arch != "resnet50":
        raise UserError(f"model.pretrained needs model.arch=resnet50, not "
                        f"'{config.model.arch}'; set --config.model.pretrained=False")
    weights, meta = resnet_weights.load_resnet50(config.model.get("weights") or None)
    if meta["layout"] != config.model.layout:
        raise UserError(f"{meta['path']} holds {meta['layout']}-layout weights but the config "
                        f"says model.layout={config.model.layout}; set "
                        f"--config.model.layout={meta['layout']}")
    new_head = meta["num_classes"] != config.model.num_classes
    merged, report = pretrained.merge_pretrained(
        variables, weights, skip=(".*/head/.*",) if new_head else ())
    for line in pretrained.describe(report):
        log.info(line)
    log.info("pretrained weights: %s (sha256 %s)", meta["path"], meta["sha256"])
    return merged


def batch_norm_trains(config: ml_collections.ConfigDict) -> bool:
    """Whether batch norm normalises with the batch's statistics (and updates its running
    averages) in training steps. ``model.batch_norm_frozen`` keeps the running statistics of
    pretrained weights instead: small fine-tuning batches of upsampled images would replace
    ImageNet's statistics with noisy ones."""
    return not config.model.get("batch_norm_frozen", False)


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy against one-hot labels smoothed by `smoothing`."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if population.active(smoothing):
        targets = optax.smooth_labels(targets, smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(state: ClassifierState, batch: dict, *, config: ml_collections.ConfigDict):
    """One optimizer update on this device's slice of the batch."""
    model = make_model(config, axis_name=parallel.AXIS)
    tx = make_optimizer(config)
    # Dropout masks: a fresh key per step, the same on every device (the masks are drawn for
    # the global batch and sliced, so any device count drops the same units).
    key = jax.random.fold_in(state.key, state.step)
    images, labels = batch["image"], batch["label"]

    def loss_fn(params):
        logits, updates = model.apply(state.net.variables(params), images,
                                      train=batch_norm_trains(config),
                                      mutable=["batch_stats"], rngs={"dropout": key})
        loss = cross_entropy(logits, labels, config.loss.label_smoothing).mean()
        return loss, (logits, updates.get("batch_stats", state.net.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.net.params)
    grads = jax.lax.pmean(grads, parallel.AXIS)
    net = apply_gradients(state.net, grads, tx).replace(batch_stats=batch_stats)
    metrics = {
        "loss": loss,
        "accuracy": (jnp.argmax(logits, -1) == labels).mean(),
        "lr": make_schedule(config)(state.step),
        "grad_norm": optax.tree.norm(grads),
        # 1.0 while the updated weights are finite; the loop stops the run otherwise
        "finite": parallel.tree_all_finite(net.params).astype(jnp.float32),
    }
    metrics = jax.lax.pmean(metrics, parallel.AXIS)
    return ClassifierState(net=net, step=state.step + 1, key=state.key), metrics


def logits_of(state: ClassifierState, images: jax.Array, config) -> jax.Array:
    """Inference logits (running batch-norm averages), with the test-time augmentation the
    config asks for: ``tta_flip`` averages the image and its mirror; ``tta_translate`` gives
    half the weight to the image and a quarter to each of two copies shifted by one pixel
    (up-left and down-right, reflection-padded), each flip-averaged when ``tta_flip``."""
    model = make_model(config)
    variables = state.net.variables()

    def infer(x: jax.Array) -> jax.Array:
        logits = model.apply(variables, x, train=False)
        if config.get("tta_flip", False):
            # The mirror image is as likely as the image itself (training flips too).
            logits = (logits + model.apply(variables, x[:, :, ::-1], train=False)) / 2
        return logits

    logits = infer(images)
    if config.get("tta_translate", False):
        # Training crops shift images by a few pixels, so one-pixel shifts are in-distribution;
        # the unshifted view keeps the larger weight as the most likely one.
        padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        up_left, down_right = padded[:, 2:, 2:], padded[:, :-2, :-2]
        logits = logits / 2 + (infer(up_left) + infer(down_right)) / 4
    return logits


def eval_step(state: ClassifierState, batch: dict, *, config) -> dict[str, jax.Array]:
    """Masked sums over this device's rows, added over all devices (psum)."""
    logits = logits_of(state, batch["image"], config)
    return jax.lax.psum(eval_sums(logits, batch["label"], batch["mask"]), parallel.AXIS)


def eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """This device's masked sums: loss, top-1, top-5, count and the confusion matrix."""
    num_classes = logits.shape[-1]
    top = jax.lax.top_k(logits, min(TOP_K, num_classes))[1]
    predicted = top[:, 0]
    confusion = jnp.einsum("bi,bj->ij", jax.nn.one_hot(labels, num_classes) * mask[:, None],
                           jax.nn.one_hot(predicted, num_classes))
    return {
        "loss": jnp.sum(cross_entropy(logits, labels) * mask),
        "top1": jnp.sum((predicted == labels) * mask),
        "top5": jnp.sum(jnp.any(top == labels[:, None], axis=-1) * mask),
        "count": jnp.sum(mask),
        "confusion": confusion,  # rows: true class, columns: predicted class
    }


def population_eval_step(state: population.PopulationState, batch: dict, *,
                         config) -> dict[str, Any]:
    """`eval_step` of every member, and of the ensemble: the mean of the members' softmax."""
    logits = jax.vmap(lambda member: logits_of(member, batch["image"], config))(state.members)
    labels, mask = batch["label"], batch["mask"]
    members = jax.vmap(lambda member_logits: eval_sums(member_logits, labels, mask))(logits)
    # log(mean_k softmax_k), through logsumexp: finite where a member's probability underflows.
    log_mean = (jax.scipy.special.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0)
                - jnp.log(logits.shape[0]))
    sums = {"members": members, "ensemble": eval_sums(log_mean, labels, mask)}
    return jax.lax.psum(sums, parallel.AXIS)


# ----------------------------------------------------------------------------- evaluation


def check_labels(source: data_lib.ImageSource, num_classes: int) -> None:
    """Refuses unlabelled data and labels outside [0, num_classes)."""
    if source.labels is None:
        raise UserError(
            f"'{source.name}' has no labels, and a classifier needs them; put each class's "
            "images in its own subfolder (or add the idx labels file) and set --config.data.path")
    low, high = int(source.labels.min()), int(source.labels.max())
    if low < 0:
        raise UserError(f"'{source.name}' has negative labels (down to {low}); labels must be "
                        "0 .. num_classes-1, fix the data set")
    if high >= num_classes:
        raise UserError(
            f"'{source.name}' has labels up to {high}, outside [0, {num_classes}); set "
            f"--config.model.num_classes to {high + 1} (or more), or fix the data set")


def class_names(config: ml_collections.ConfigDict) -> list[str]:
    """The configured (or data-derived, saved at training) class names; numbers if unknown."""
    names = list(config.data.get("class_names") or ())
    return names or [str(i) for i in range(config.model.num_classes)]


def resolve_class_names(config: ml_collections.ConfigDict,
                        source: data_lib.ImageSource) -> tuple[str, ...]:
    """Class names from the config, else from the data (padded with numbers to num_classes)."""
    num_classes = config.model.num_classes
    configured = tuple(config.data.get("class_names") or ())
    if configured:
        if len(configured) != num_classes:
            raise UserError(
                f"--config.data.class_names has {len(configured)} names for {num_classes} "
                "classes; give one name per class or leave it empty to take them from the data")
        return configured
    names = list(source.class_names or ())[:num_classes]
    return tuple(names + [str(i) for i in range(len(names), num_classes)])


def summarize(sums: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    """Totals -> loss, top-1/top-5 accuracy, per-class accuracy and the confusion matrix."""
    count = float(sums["count"])
    confusion = np.rint(sums["confusion"]).astype(np.int64)
    per_class = {}
    for i, name in enumerate(names):
        total = int(confusion[i].sum())
        per_class[name] = round(float(confusion[i, i]) / total, 6) if total else None
    return {
        "loss": float(sums["loss"]) / count, "top1": float(sums["top1"]) / count,
        "top5": float(sums["top5"]) / count, "num_examples": int(round(count)),
        "per_class_accuracy": per_class, "class_names": list(names),
        "confusion_matrix": confusion.tolist(),
    }


class Evaluator:
    """Evaluates a state on the whole evaluation split, data-parallel over the devices; a
    population's members and their ensemble (mean softmax) in the same pass."""

    def __init__(self, config: ml_collections.ConfigDict, source: data_lib.ImageSource,
                 dp: DataParallel | None = None):
        self.config = config
        self.members = population.size(config)
        # Inference reads no per-member key: one compiled step for every member.
        frozen = ml_collections.FrozenConfigDict(
            population.base_config(config) if self.members else config)
        step = population_eval_step if self.members else eval_step
        m = config.model
        self.split = SplitEvaluator(
            source, functools.partial(step, config=frozen),
            dp=dp or DataParallel(config.parallel), batch_size=config.eval_batch_size,
            image_size=m.image_size, channels=m.channels)

    def batches(self):
        """The padded, masked batches (see `common_jax.evaluate.SplitEvaluator`)."""
        return self.split.batches()

    def __call__(self, state) -> dict[str, Any]:
        """`summarize`'s figures; a population's as {"members": [...], "ensemble": ...}."""
        sums, names = self.split.sums(state), class_names(self.config)
        if not self.members:
            return summarize(sums, names)
        members = [summarize(jax.tree.map(lambda x, i=i: x[i], sums["members"]), names)
                   for i in range(self.members)]
        return {"members": members, "ensemble": summarize(sums["ensemble"], names)}


def save_confusion_matrix(path: str | Path, confusion: np.ndarray, names: list[str],
                          title: str = "") -> Path:
    """A PNG of the confusion matrix (rows: true class, columns: predicted), row-normalised
    colours, counts written in when there are few classes."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion)
    k = len(confusion)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * k + 2.0), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 40:  # beyond that the names would overlap
        ax.set_xticks(range(k), names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 20:
        for i, j in np.ndindex(k, k):
            if confusion[i, j]:
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


class Evaluation:
    """The task's data checks (`prepare`) and its periodic evaluation action."""

    def __init__(self, config: ml_collections.ConfigDict, summary: dict,
                 spec: population.Spec | None = None):
        self.config = config
        self.summary = summary  # the Task's: the loop merges it into summary.json
        self.spec = spec  # a population's checked section (None or 0 members: one network)
        self.evaluator: Evaluator | None = None

    def prepare(self, source: data_lib.ImageSource) -> None:
        """Checks the training labels, keeps the class names and loads the evaluation split."""
        config = self.config
        check_labels(source, config.model.num_classes)
        names = resolve_class_names(config, source)
        # Saved with the config in every checkpoint, so `train.py classify` knows the names
        # without reading the data.
        with config.unlocked():
            config.data.class_names = names
        split = config.data.get("eval_split", "")
        if not split:
            log.info("no evaluation split (data.eval_split is empty); evaluation is skipped")
            return
        eval_source = data_lib.load_source(config.data, split=split)
        check_labels(eval_source, config.model.num_classes)
        self.evaluator = Evaluator(config, eval_source)
        log.info("evaluation: %s, %d examples", eval_source.name, eval_source.num_examples)

    def __call__(self, state, step: int, writer, *, final: bool = False):
        if self.evaluator is None:
            return
        result = self.evaluator(state)
        if "members" in result:
            return self._population(result, step, writer, final=final)
        self._write(result, step, writer, "")
        if final:
            self.summary["eval"] = {"step": step, **result}
            if writer.primary:
                title = f"step {step}: top-1 {result['top1']:.4f}"
                save_confusion_matrix(writer.workdir / "confusion_matrix.png",
                                      np.array(result["confusion_matrix"]),
                                      result["class_names"], title)
                writer.plot(("accuracy", "eval_top1"), "accuracy.png")

    @staticmethod
    def _write(result: dict, step: int, writer, prefix: str) -> None:
        writer.write_scalars(step, {f"{prefix}eval_loss": result["loss"],
                                    f"{prefix}eval_top1": result["top1"],
                                    f"{prefix}eval_top5": result["top5"]})
        log.info("step %d: %seval top-1 %.4f, top-5 %.4f, loss %.4f (%d examples)", step,
                 prefix, result["top1"], result["top5"], result["loss"],
                 result["num_examples"])

    def _population(self, result: dict, step: int, writer, *, final: bool) -> None:
        """Every member's figures (member3/eval_top1, ...) and the ensemble's
        (ensemble/eval_top1, ...); at the end the best member by test top-1."""
        for index, member in enumerate(result["members"]):
            self._write(member, step, writer, population.key(index, ""))
        self._write(result["ensemble"], step, writer, "ensemble/")
        if not final:
            return
        best = population.best_entry(self.spec, [m["top1"] for m in result["members"]],
                                     by="eval_top1", lower_is_better=False)
        self.summary["eval"] = {"step": step, **result, "best": best}
        self.summary.setdefault("population", {})["best"] = best
        population.log_best(best, "test accuracy")
        log.info("ensemble of %d members (mean softmax): eval top-1 %.4f",
                 len(result["members"]), result["ensemble"]["top1"])
        if writer.primary and best is not None:
            chosen = result["members"][best["member"]]
            title = f"member {best['member']}, step {step}: top-1 {chosen['top1']:.4f}"
            save_confusion_matrix(writer.workdir / "confusion_matrix.png",
                                  np.array(chosen["confusion_matrix"]),
                                  chosen["class_names"], title)
            writer.plot((*population.names(self.config, ("eval_top1",)), "ensemble/eval_top1"),
                        "accuracy.png")


# ----------------------------------------------------------------------------- inference


@functools.partial(jax.jit, static_argnames=("config",))
def _probabilities(state: ClassifierState, images: jax.Array, config) -> jax.Array:
    return jax.nn.softmax(logits_of(state, images, config), axis=-1)


def predict_proba(state: ClassifierState, images: np.ndarray, config,
                  batch_size: int = 256) -> np.ndarray:
    """Class probabilities [N, num_classes] for preprocessed images [N, S, S, C] in [-1, 1]."""
    frozen = ml_collections.FrozenConfigDict(config)
    chunks = [np.asarray(_probabilities(state, jnp.asarray(images[i:i + batch_size]), frozen))
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, config.model.num_classes))


def inference_network(state: ClassifierState, config) -> tuple[Any, dict]:
    """(Flax module, variables) for inference, e.g. as the judge of GAN samples
    (`common_jax.metrics.judge`): ``module.apply(variables, images, train=False)`` gives the
    logits and sows the penultimate features into "intermediates". No flip averaging."""
    refuse_population(state, "a judge (or any single network) needs one classifier")
    return make_model(config), state.net.variables()


def refuse_population(state, why: str) -> None:
    """A one-line error for a population's state where one network is needed."""
    if isinstance(state, population.PopulationState):
        raise UserError(f"this run is a population of {population.count(state)} classifiers and "
                        f"{why}; train a single run for it, or pick a member with "
                        "`train.py classify --member i`")


def classify_files(state: ClassifierState, config, paths) -> list[list[tuple[str, float]]]:
    """For each image file, (class name, probability) of every class, most likely first."""
    m = config.model
    images = data_lib.load_image_files(paths, image_size=m.image_size, channels=m.channels)
    names = class_names(config)
    results = []
    for p in predict_proba(state, images, config):
        order = np.argsort(-p, kind="stable")
        results.append([(names[i], float(p[i])) for i in order])
    return results


def pretrained_state(config: ml_collections.ConfigDict
                     ) -> tuple[ClassifierState, ml_collections.ConfigDict, dict]:
    """The pretrained network a config names, for inference without a run.

    Reads `config.model.weights` ("" -> the newest converted file in the cache) and returns
    (state without optimizer state, the config with the weights' class count and names, the
    weights' meta: path, sha256, layout, ...).
    """
    from classifiers_jax import resnet_weights

    if config.model.arch != "resnet50":
        raise UserError(f"model.arch '{config.model.arch}' has no pretrained weights; give "
                        "--workdir of a trained run, or a resnet50 config")
    variables, meta = resnet_weights.load_resnet50(config.model.get("weights") or None)
    if meta["layout"] != config.model.layout:
        raise UserError(f"{meta['path']} holds {meta['layout']}-layout weights but the config "
                        f"says model.layout={config.model.layout}; set "
                        f"--config.model.layout={meta['layout']}")
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.num_classes = meta["num_classes"] or 0
    config.data.class_names = tuple(meta["class_names"])
    net = NetState(params=variables["params"], batch_stats=variables["batch_stats"],
                   opt_state=())
    state = ClassifierState(net=net, step=jnp.zeros((), jnp.int32),
                            key=jax.random.PRNGKey(config.seed))
    return state, config, meta


def extract_features(config: ml_collections.ConfigDict, workdir: str, split: str
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The `train.py features` hook: a ResNet50's pooled 2048-d features of a whole split.

    With a checkpoint in `workdir`, the trained (fine-tuned) network's; without one, the
    config's pretrained weights as they are (`classifiers_jax.transfer.extract`, cached).
    """
    from classifiers_jax import transfer
    from common_jax.checkpoint import restore_for_inference

    if config.model.arch != "resnet50":
        raise UserError(f"features are a ResNet50's pooled features, and this is a "
                        f"'{config.model.arch}' classifier; give a resnet50 run or config")
    if not any((Path(workdir) / "checkpoints").glob("[0-9]*")):
        return transfer.extract(config, split)
    config, state, _ = restore_for_inference(workdir, lambda _: sys.modules[__name__])
    refuse_population(state, "features are one network's")
    features, labels, timing = transfer.split_features(make_model(config),
                                                       state.net.variables(), config, split)
    protocol = {"network": "resnet50 (trained in this run)", "features": "pooled, 2048-d",
                "batch_norm": "inference (running statistics)", **timing}
    return features, labels, protocol


# ----------------------------------------------------------------------------- entry point


def make_task(config: ml_collections.ConfigDict) -> loop.Task:
    """What the shared loop needs to train a classifier (or a population of them)."""
    spec = population.check(config, POPULATION_KEYS)  # before anything touches JAX
    summary: dict = {}
    if spec.members:
        summary["population"] = population.describe(spec)
    evaluation = Evaluation(config, summary, spec)

    def prepare(sources):
        source = sources["train"]
        evaluation.prepare(source)
        log.info("%d steps = %.1f epochs of %d examples", config.num_steps,
                 config.num_steps * config.batch_size / source.num_examples, source.num_examples)
        population.record_memory(config, create_state, train_step, summary)

    return loop.Task(
        create_state=functools.partial(create_state, config),
        stages=loop.single_stage(config, population.wrap_step(train_step, config)),
        periodic={"eval": (config.eval_every, evaluation)},
        prepare=prepare,
        progress_metrics=population.names(config, ("loss", "accuracy"), first_only=True),
        plot_metrics=population.names(config, ("loss", "eval_loss")),
        summary=summary,
        resumable=population.resumable(RESUMABLE, config),
        choices=CONFIG_CHOICES,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) a classifier in workdir, evaluating it; returns the run summary."""
    return loop.train(config, workdir, make_task(config))
