"""Scores of a GAN's samples, as the `metrics` section of its config asks.

- Judge (``metrics.judge_workdir``, a classifier run; `common_jax.metrics.judge`): FID and KID
  on the classifier's penultimate features, and mode coverage (classes covered, class KL).
- Inception (``metrics.inception``; `common_jax.metrics.gan_metrics`): FID and KID on the FID
  Inception network's pool3 features, resized as ``metrics.resize`` says.

Both compare generated images with a fixed random subset of up to ``metrics.num_samples`` real
images of ``metrics.reference_split``, at the GAN's image size; their features are computed
once, on first use, and kept (Inception's are also cached on disk). Every score comes with its
protocol. `ScoreAction` is a trainer's periodic action (scalars every ``metrics.every`` steps on
``metrics.periodic_num_samples`` samples; at the end on ``metrics.num_samples``, also into
summary.json "gan_metrics"); `evaluate_checkpoint` is `train.py eval` (summary.json "eval");
`score_real_split` is `train.py floor`: real images of one split scored as if generated, the
floor a perfect generator would reach. A population (`common_jax.population`) is scored member
by member against the same reference, and its best member is the one of lowest FID (judge FID,
else Inception FID).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from common_jax import data as data_lib
from common_jax import population
from common_jax.errors import UserError
from common_jax.metrics import gan_metrics as gm
from common_jax.metrics import inception as inception_lib
from common_jax.metrics import judge as judge_lib
from common_jax.writers import RunWriter
from gans_jax.configs.dcgan_base import metrics_config

log = logging.getLogger(__name__)

REFERENCE_SEED = 0  # picks the real images of the reference subset
SAMPLE_SEED = 1  # the scored latent vectors: fixed, so a score curve follows G and not z

# A stream of `num` generated images, as batches (a trainer's data-parallel sampler).
Sampler = Callable[[int], Iterable[np.ndarray]]


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config's `metrics` section over the defaults (configs older than it have none)."""
    merged = metrics_config()
    section = config.get("metrics")
    if section:
        merged.update(section.to_dict() if hasattr(section, "to_dict") else dict(section))
    return merged


def enabled(metrics: ml_collections.ConfigDict) -> bool:
    return bool(metrics.judge_workdir) or bool(metrics.inception)


def check_settings(m: ml_collections.ConfigDict) -> None:
    """Refuses settings that cannot work, naming the key to fix."""
    problems = []
    for key in ("num_samples", "periodic_num_samples"):
        if m[key] < 2:
            problems.append(f"metrics.{key} must be at least 2 (a covariance needs 2 samples)")
    if m.every < 0:
        problems.append("metrics.every must be >= 0 (0: only at the end)")
    if m.batch_size < 1:
        problems.append("metrics.batch_size must be at least 1")
    if not 0.0 < m.coverage_threshold <= 1.0:
        problems.append("metrics.coverage_threshold must be in (0, 1], e.g. 0.01")
    if m.class_reference not in judge_lib.CLASS_REFERENCES:
        problems.append(f"metrics.class_reference must be one of "
                        f"{', '.join(judge_lib.CLASS_REFERENCES)}")
    if m.resize not in inception_lib.RESIZE_METHODS:
        problems.append(f"metrics.resize must be one of {', '.join(inception_lib.RESIZE_METHODS)}")
    if m.kid_subsets < 1 or m.kid_subset_size < 2:
        problems.append("metrics.kid_subsets must be >= 1 and metrics.kid_subset_size >= 2")
    if problems:
        raise UserError(f"bad metrics settings: {'; '.join(problems)}; set them with "
                        "--config.metrics.<key>=...")


class SampleScorer:
    """The configured networks and real reference images; scores streams of samples."""

    def __init__(self, config: ml_collections.ConfigDict,
                 metrics: ml_collections.ConfigDict | None = None):
        self.config = config
        self.metrics = m = metrics if metrics is not None else settings(config)
        check_settings(m)
        # Loaded now so that a bad judge or missing weights stop a run before it trains.
        self.judge = judge_lib.load_judge(m.judge_workdir) if m.judge_workdir else None
        if self.judge is not None:
            self.judge.check_images(
                config.model.image_size, config.model.channels,
                none="set --config.metrics.judge_workdir (eval: --judge_workdir) to \"\"")
        self.inception = gm.load_feature_network(resize=m.resize) if m.inception else None
        self.split = m.reference_split or config.data.split
        self.source: data_lib.ImageSource | None = None
        self._judge_reference: judge_lib.JudgeReference | None = None
        self._inception_reference: gm.Reference | None = None

    def load_reference_source(self) -> None:
        """Opens the reference split (cheap; features are computed on first use)."""
        self.source = data_lib.load_source(self.config.data, split=self.split)
        if self.source.num_examples < 2:
            raise UserError(f"'{self.source.name}' has {self.source.num_examples} images, too "
                            "few to compare samples with; set --config.metrics.reference_split "
                            "to a split with more")

    @property
    def num_real(self) -> int:
        return min(self.metrics.num_samples, self.source.num_examples)

    @property
    def dataset(self) -> str:
        """The reference data set's name, without the split the source names append."""
        name = self.source.name
        suffix = f" ({self.split})"
        return name[:-len(suffix)] if name.endswith(suffix) else name

    def _real_batches(self) -> Iterable[dict[str, np.ndarray]]:
        # A seeded permutation of the split: its first num_real images are a random subset
        # without repeats, the same on every call and independent of the batch size.
        m = self.config.model
        return data_lib.make_train_iterator(
            self.source, batch_size=min(self.metrics.batch_size, self.num_real),
            image_size=m.image_size, channels=m.channels, seed=REFERENCE_SEED)

    def judge_reference(self) -> judge_lib.JudgeReference:
        if self._judge_reference is None:
            self._judge_reference = judge_lib.judge_reference(
                self.judge, self._real_batches(), dataset=self.dataset, split=self.split,
                num_samples=self.num_real, class_reference=self.metrics.class_reference,
                batch_size=self.metrics.batch_size)
        return self._judge_reference

    def inception_reference(self) -> gm.Reference:
        if self._inception_reference is None:
            self._inception_reference = gm.reference_statistics(
                self.inception, self.dataset, self.split,
                lambda: (batch["image"] for batch in self._real_batches()),
                num_samples=self.num_real, batch_size=self.metrics.batch_size,
                keep_features=True)
        return self._inception_reference

    def score(self, sampler: Sampler, num: int) -> dict[str, Any]:
        """{"judge": {...}, "inception": {...}} (those configured) for `num` samples."""
        if self.source is None:
            self.load_reference_source()
        m = self.metrics
        kid = {"kid_subsets": m.kid_subsets, "kid_subset_size": m.kid_subset_size}
        result = {}
        # Each network draws its own pass of the sampler: the samples are the same (fixed z)
        # and generating again costs less than holding them all.
        if self.judge is not None:
            result["judge"] = judge_lib.score(
                self.judge, sampler(num), self.judge_reference(), num_samples=num,
                batch_size=m.batch_size, coverage_threshold=m.coverage_threshold, **kid)
        if self.inception is not None:
            result["inception"] = gm.evaluate(
                self.inception, lambda: sampler(num), self.inception_reference(),
                num_samples=num, metrics=("fid", "kid"), batch_size=m.batch_size, **kid)
        return result


def scorer_for(config: ml_collections.ConfigDict) -> SampleScorer | None:
    """A scorer when the config asks for scores, else None (and no cost at all)."""
    metrics = settings(config)
    return SampleScorer(config, metrics) if enabled(metrics) else None


# ----------------------------------------------------------------------------------------------
# Reporting


def scalars(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scores as TensorBoard / metrics.jsonl scalars: judge_fid, inception_fid, ..., and
    each network's generated-sample count (`inception_samples`): FID depends on it, and a run
    resumed with more steps holds an earlier final score among its periodic ones."""
    out = {}
    if "judge" in result:
        j = result["judge"]
        out.update(judge_fid=j["fid"], judge_kid=j["kid_mean"],
                   judge_classes_covered=j["classes_covered"], judge_class_kl=j["class_kl"])
    if "inception" in result:
        i = result["inception"]
        out.update(inception_fid=i["fid"], inception_kid=i["kid_mean"])
    for network in ("judge", "inception"):
        n_fake = (result.get(network, {}).get("protocol") or {}).get("n_fake")
        if n_fake is not None:
            out[f"{network}_samples"] = n_fake
    return {prefix + k: float(v) for k, v in out.items()}


def describe(result: dict[str, Any]) -> list[str]:
    """Human-readable lines: each network's scores, then its protocol."""
    lines = []
    if "judge" in result:
        j = result["judge"]
        lines.append(f"judge: FID {j['fid']:.4f}, KID {j['kid_mean']:.5f} ± {j['kid_std']:.5f}, "
                     f"classes covered {j['classes_covered']}/{j['num_classes']} "
                     f"(>= {j['coverage_threshold']:.2%} of samples), "
                     f"class KL {j['class_kl']:.4f}")
        lines.append(f"  protocol: {_protocol_text(j['protocol'])}")
    if "inception" in result:
        i = result["inception"]
        lines.append(f"inception: FID {i['fid']:.4f}, KID {i['kid_mean']:.5f} ± "
                     f"{i['kid_std']:.5f}")
        lines.append(f"  protocol: {_protocol_text(i['protocol'])}")
    return lines


def _protocol_text(protocol: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in protocol.items())


class ScoreAction:
    """A trainer's periodic action: scores samples of the state's EMA generator, and of the raw
    generator too when `raw_sampler` is given (a run with a weight average).

    `sampler(state, num)` streams the samples. Every ``metrics.every`` steps it scores
    ``metrics.periodic_num_samples`` of them; at the end ``metrics.num_samples``, and puts the
    result into the task's summary under "gan_metrics" ("gan_metrics_raw" for the raw
    generator, whose scalars are prefixed "raw_"). A population's members are scored one after
    the other (scalars ``member3/judge_fid``, ...); at the end the best member by FID goes into
    the summary's "population" (with `spec`, the checked population section).
    """

    def __init__(self, scorer: SampleScorer, sampler: Callable[[Any, int], Iterable],
                 summary: dict, spec: population.Spec | None = None,
                 raw_sampler: Callable[[Any, int], Iterable] | None = None):
        self.scorer, self.sampler, self.summary = scorer, sampler, summary
        self.spec, self.raw_sampler = spec, raw_sampler

    def __call__(self, state, step: int, writer: RunWriter, *, final: bool = False) -> None:
        m = self.scorer.metrics
        num = m.num_samples if final else m.periodic_num_samples
        self._score(state, step, writer, num, final, self.sampler, "", "gan_metrics")
        if self.raw_sampler is not None:
            self._score(state, step, writer, num, final, self.raw_sampler, "raw_",
                        "gan_metrics_raw")

    def _score(self, state, step: int, writer: RunWriter, num: int, final: bool,
               sampler: Callable[[Any, int], Iterable], prefix: str, key: str) -> None:
        results = []
        for index, member in population.each(state):
            result = self.scorer.score(lambda n, s=member: sampler(s, n), num)
            writer.write_scalars(step, scalars(result, prefix=population.name(index, prefix)))
            for line in describe(result):
                log.info("step %d %s%s%s", step, population.name(index, ""),
                         "raw G " if prefix else "", line)
            results.append(result)
        if not final:
            return
        if not isinstance(state, population.PopulationState):
            self.summary[key] = {"step": step, **results[0]}
            return
        best = rank(self.spec, results)
        self.summary[key] = {"step": step, "members": results, "best": best}
        if not prefix:  # members are ranked by the generator their samples come from
            self.summary.setdefault("population", {})["best"] = best
            population.log_best(best, "FID")


def rank(spec: population.Spec, results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best member by judge FID (Inception FID without a judge), lower being better."""
    for network in ("judge", "inception"):
        if results and all(network in r for r in results):
            return population.best_entry(spec, [r[network]["fid"] for r in results],
                                         by=f"{network}_fid", lower_is_better=True)
    return None


def describe_population(result: dict[str, Any]) -> list[str]:
    """`describe` of every member's scores, then the best member."""
    lines = []
    for index, member in enumerate(result["members"]):
        lines += [f"member {index}: {line}" for line in describe(member)]
    best = result.get("best")
    if best is not None:
        settings = ", ".join(f"{k} {v:g}" for k, v in best["settings"].items())
        lines.append(f"best member: {best['member']} ({best['by']} {best['value']:.4f}; "
                     f"{settings})")
    return lines


def eval_scorer(config: ml_collections.ConfigDict, *, num: int | None,
                judge_workdir: str | None, inception: bool | None) -> SampleScorer:
    """The scorer of `train.py eval`: the run's metrics section, overridden by the flags."""
    metrics = settings(config)
    if num is not None:
        metrics.num_samples = num
    if judge_workdir is not None:
        metrics.judge_workdir = judge_workdir
    if inception is not None:
        metrics.inception = inception
    if not enabled(metrics):
        raise UserError("nothing to score: the run's config names no judge and Inception is "
                        "off; pass --judge_workdir DIR (a classifier run) and/or --inception")
    scorer = SampleScorer(config, metrics)
    scorer.load_reference_source()
    return scorer


def eval_name(use_ema: bool = True) -> str:
    """The name `train.py eval` files its scores under: "eval" for the EMA generator (or the
    only one), "eval_raw" for the raw generator of a run with a weight average."""
    return "eval" if use_ema else "eval_raw"


def evaluate_checkpoint(config: ml_collections.ConfigDict, step: int, workdir: str | Path,
                        sampler: Sampler, *, num: int | None = None,
                        judge_workdir: str | None = None, inception: bool | None = None,
                        member: int | None = None, use_ema: bool = True) -> dict[str, Any]:
    """`train.py eval`: scores a restored generator, arguments overriding the run's config.

    Writes eval_* scalars at the checkpoint's step (TensorBoard, metrics.jsonl) and the result
    into <workdir>/summary.json under "eval", keeping the rest of the file; with `use_ema`
    False (the sampler draws from the raw generator) it files them as eval_raw_* and
    "eval_raw". `member` (a population's member, `train.py eval --member i`) names the scalars
    member3/eval_* and is recorded in the result.
    """
    name = eval_name(use_ema)
    scorer = eval_scorer(config, num=num, judge_workdir=judge_workdir, inception=inception)
    result = {"step": step, **({"member": member} if member is not None else {}),
              **scorer.score(sampler, scorer.metrics.num_samples)}
    _write_eval(workdir, step, scalars(result, prefix=population.name(member, f"{name}_")),
                result, name)
    return result


def evaluate_population(config: ml_collections.ConfigDict, step: int, workdir: str | Path,
                        samplers: list[Sampler], spec: population.Spec, *,
                        num: int | None = None, judge_workdir: str | None = None,
                        inception: bool | None = None, use_ema: bool = True) -> dict[str, Any]:
    """`train.py eval` of a population: every member scored against the same reference, the
    best by FID chosen; summary.json "eval" ("eval_raw" without `use_ema`) holds "members" and
    "best"."""
    name = eval_name(use_ema)
    scorer = eval_scorer(config, num=num, judge_workdir=judge_workdir, inception=inception)
    results = [scorer.score(sampler, scorer.metrics.num_samples) for sampler in samplers]
    result = {"step": step, "members": results, "best": rank(spec, results)}
    values = {}
    for index, member in enumerate(results):
        values.update(scalars(member, prefix=population.key(index, f"{name}_")))
    _write_eval(workdir, step, values, result, name)
    return result


def _write_eval(workdir: str | Path, step: int, values: dict[str, float],
                result: dict[str, Any], name: str) -> None:
    primary = jax.process_index() == 0  # one writer in a multi-process job
    writer = RunWriter(workdir, primary=primary)
    try:
        writer.write_scalars(step, values)
    finally:
        writer.close()
    if primary:
        merge_summary(Path(workdir) / "summary.json", name, result)


def score_real_split(config: ml_collections.ConfigDict, split: str, *, num: int | None = None,
                     judge_workdir: str | None = None) -> dict[str, Any]:
    """`train.py floor`: Inception (and judge, if named) scores of `num` random real images of
    `split` against the reference split, as `evaluate_checkpoint` scores samples.

    Also returns how long each network's features took, in seconds: "reference_seconds" for
    the reference images (0 when read from the cache; "reference_cached" says so) and
    "scored_seconds" for the images of `split` through every network scored (the judge's pass,
    when one is named, is seconds beside Inception's).
    """
    metrics = settings(config)
    metrics.inception = True
    if num is not None:
        metrics.num_samples = num
    if judge_workdir is not None:
        metrics.judge_workdir = judge_workdir
    scorer = SampleScorer(config, metrics)
    scorer.load_reference_source()
    if split == scorer.split:
        raise UserError(f"--split {split} is the reference split itself; compare another split "
                        "(e.g. --split train against the test split)")
    source = data_lib.load_source(config.data, split=split)
    num = min(metrics.num_samples, source.num_examples)
    m = config.model

    def real_images(n: int) -> Iterable[np.ndarray]:
        batches = data_lib.make_train_iterator(
            source, batch_size=min(metrics.batch_size, n), image_size=m.image_size,
            channels=m.channels, seed=SAMPLE_SEED)
        return (batch["image"] for batch in batches)

    start = time.perf_counter()
    reference = scorer.inception_reference()
    reference_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = scorer.score(real_images, num)
    result["inception"].update(reference_cached=reference.from_cache,
                               reference_seconds=0.0 if reference.from_cache else reference_seconds,
                               scored_seconds=time.perf_counter() - start)
    result["scored_split"] = split
    return result


def merge_summary(path: Path, key: str, value: Any) -> None:
    """Sets summary.json[key] = value, keeping the other keys (a new file if none)."""
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary[key] = value
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(path)  # never a half-written summary
