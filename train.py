"""The one command line: train, sample from, score and classify with every model here.

    python train.py --config gans_jax/configs/dcgan_fashion_mnist.py --workdir runs/fashion
    python train.py --config gans_jax/configs/dcgan_mnist.py:smoke --workdir /tmp/smoke \
        --config.num_steps=20
    python train.py sample --workdir runs/fashion --num 64 --out grid.png [--noema]
    python train.py classify --workdir runs/cls_mnist digit.png photo.jpg [--top 5]
    python train.py eval --workdir runs/fashion [--num 10000] [--judge_workdir runs/cls_fm]
        [--inception]
    python train.py floor --config classifiers_jax/configs/cifar10.py [--split train]
        [--num 10000] [--judge_workdir DIR] [--workdir DIR]

`eval` scores a GAN run's latest checkpoint as its config's `metrics` section says (the flags
override it): judge and/or Inception FID and KID, mode coverage, each with its protocol.
`floor` scores real images of --split against the config's reference split (metrics section;
test by default) the same way: the FID a perfect generator would reach; with --workdir it
also goes into <workdir>/summary.json "floor".
Training resumes from the latest checkpoint in --workdir. Errors caused by the input are
printed as one line that names the fix (exit status 2); a diverged run exits with status 3.
"""

from __future__ import annotations

import importlib
import logging as std_logging
import os
import sys

# Keep TensorFlow (used only for tf.data) quiet and off any GPU before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

COMMANDS = ("train", "sample", "classify", "eval", "floor")
log = std_logging.getLogger("__main__")

config_flags.DEFINE_config_file("config", None, "Config file, optionally path.py:variant.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples, logs and summary.")
flags.DEFINE_integer("num", 64, "sample: number of images; eval: number of samples scored "
                     "(default: the run's metrics.num_samples).")
flags.DEFINE_string("out", None, "sample: output PNG (default <workdir>/sample.png).")
flags.DEFINE_bool("ema", True, "sample: use the generator's moving-average weights.")
flags.DEFINE_integer("seed", 0, "sample: seed of the latent vectors.")
flags.DEFINE_integer("top", 5, "classify: classes shown per image, most likely first.")
flags.DEFINE_string("judge_workdir", None, "eval: a classifier run to judge the samples with "
                    "(default: the run's metrics.judge_workdir; \"\" for none).")
flags.DEFINE_bool("inception", None, "eval: also score with the FID Inception network "
                  "(default: the run's metrics.inception).")
flags.DEFINE_string("split", "train", "floor: the real split scored against the reference one.")
FLAGS = flags.FLAGS


def trainer_module(config):
    """The module named by ``config.trainer`` (e.g. gans_jax.trainers.dcgan)."""
    return importlib.import_module(config.trainer)


def run_train() -> None:
    if FLAGS.config is None:
        raise_usage("train needs --config path.py[:variant]")
    from common_jax.parallel import use_cpu_cores

    use_cpu_cores((FLAGS.config.batch_size, FLAGS.config.get("eval_batch_size", 0)))
    summary = trainer_module(FLAGS.config).train_and_evaluate(FLAGS.config, FLAGS.workdir)
    log.info("done: step %s, %s images/s; outputs in %s", summary["final_step"],
                 summary["images_per_s"], FLAGS.workdir)


def run_sample() -> None:
    from common_jax.checkpoint import restore_for_inference

    def load_trainer(config):
        return trainer_module(config)

    config, state, trainer = restore_for_inference(FLAGS.workdir, load_trainer)
    if not hasattr(trainer, "generate"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not generate "
                    "images; give the --workdir of a GAN run")
    images = trainer.generate(state, trainer.sample_z(config, FLAGS.num, FLAGS.seed), config,
                              use_ema=FLAGS.ema)
    from common_jax.writers import save_image_grid

    out = FLAGS.out or os.path.join(FLAGS.workdir, "sample.png")
    scale = max(1, 128 // images.shape[1])
    save_image_grid(images, out, scale=scale)
    print(f"wrote {len(images)} samples from step {int(state.step)} "
          f"({'EMA' if FLAGS.ema else 'raw'} weights) to {out}")


def run_classify(paths: list[str]) -> None:
    """Prints the most likely classes of each image file under the latest checkpoint."""
    from common_jax.checkpoint import restore_for_inference

    if not paths:
        raise_usage("classify needs image files: python train.py classify --workdir DIR "
                    "a.png b.jpg [--top 5]")
    if FLAGS.top < 1:
        raise_usage(f"--top must be at least 1, got {FLAGS.top}")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:  # before the slow checkpoint restore
        raise_usage(f"image file{'s' if len(missing) > 1 else ''} not found: "
                    f"{', '.join(missing)}; check the path{'s' if len(missing) > 1 else ''}")
    config, state, trainer = restore_for_inference(FLAGS.workdir, trainer_module)
    if not hasattr(trainer, "classify_files"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not classify; "
                    "give the --workdir of a classifier run")
    print(f"checkpoint step {int(state.step)} in {FLAGS.workdir}")
    for path, ranked in zip(paths, trainer.classify_files(state, config, paths), strict=True):
        print(path)
        for name, probability in ranked[:FLAGS.top]:
            print(f"  {probability:8.2%}  {name}")


def run_eval() -> None:
    """Scores the latest checkpoint's EMA generator as its config's `metrics` section says
    (the flags override it) and prints the scores with their protocol."""
    from common_jax.checkpoint import restore_for_inference
    from common_jax.parallel import use_cpu_cores

    use_cpu_cores(())  # sampling and features pad their batches to the device count
    num = scored_num("eval")
    config, state, trainer = restore_for_inference(FLAGS.workdir, trainer_module)
    if not hasattr(trainer, "evaluate_checkpoint"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not generate "
                    "images; give the --workdir of a GAN run")
    result = trainer.evaluate_checkpoint(config, state, FLAGS.workdir, num=num,
                                         judge_workdir=FLAGS.judge_workdir,
                                         inception=FLAGS.inception)
    from gans_jax.evaluation import describe

    print(f"checkpoint step {result['step']} in {FLAGS.workdir} (EMA generator)")
    for line in describe(result):
        print(line)
    print(f"wrote summary.json \"eval\" and eval_* scalars (TensorBoard, metrics.jsonl) in "
          f"{FLAGS.workdir}")


def run_floor() -> None:
    """Scores real images as if generated and prints the scores, their protocol and timing."""
    if FLAGS.config is None:
        raise_usage("floor needs --config path.py[:variant] (its data and metrics sections)")
    from common_jax.parallel import use_cpu_cores
    from gans_jax import evaluation

    use_cpu_cores(())
    num = scored_num("floor")
    result = evaluation.score_real_split(FLAGS.config, FLAGS.split, num=num,
                                         judge_workdir=FLAGS.judge_workdir)
    print(f"real '{FLAGS.split}' images scored as samples:")
    for line in evaluation.describe(result):
        print(line)
    i = result["inception"]
    reference = "cached" if i["reference_cached"] else f"{i['reference_seconds']:.0f} s"
    print(f"features: reference {reference}, scored split {i['scored_seconds']:.0f} s")
    if FLAGS.workdir:
        from pathlib import Path

        Path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)
        evaluation.merge_summary(Path(FLAGS.workdir) / "summary.json", "floor", result)
        print(f"wrote summary.json \"floor\" in {FLAGS.workdir}")


def scored_num(command: str) -> int | None:
    """--num when given (at least 2: a covariance needs 2 samples), else None: the config's."""
    num = FLAGS.num if FLAGS["num"].present else None
    if num is not None and num < 2:
        raise_usage(f"--num must be at least 2 for {command} (a covariance needs 2 samples), "
                    f"got {num}")
    return num


def raise_usage(message: str) -> None:
    from common_jax.errors import UserError

    raise UserError(message)


def configure_logging() -> None:
    """Our messages at INFO; libraries (Orbax, TensorFlow) only at WARNING and above."""
    logging.set_verbosity(logging.WARNING)
    for package in ("common_jax", "gans_jax", "classifiers_jax", "__main__"):
        std_logging.getLogger(package).setLevel(std_logging.INFO)


def main(argv) -> None:
    configure_logging()
    from common_jax import parallel
    from common_jax.errors import UserError
    from common_jax.loop import TrainingDiverged

    command = argv[1] if len(argv) > 1 else "train"
    arguments = argv[2:]  # only classify takes any: the image files
    try:
        if command not in COMMANDS or (arguments and command != "classify"):
            raise_usage(f"unknown command {' '.join(argv[1:])!r}; use one of: "
                        f"{', '.join(COMMANDS)}")
        if not FLAGS.workdir and command != "floor":
            raise_usage("--workdir is required (where checkpoints and outputs go)")
        parallel.maybe_initialize_distributed()
        if command == "classify":
            run_classify(arguments)
        else:
            {"train": run_train, "sample": run_sample, "eval": run_eval,
             "floor": run_floor}[command]()
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
