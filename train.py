"""The one command line: train, sample from, score and classify with every model here.

    python train.py --config gans_jax/configs/dcgan_fashion_mnist.py --workdir runs/fashion
    python train.py --config gans_jax/configs/dcgan_mnist.py:smoke --workdir /tmp/smoke \
        --config.num_steps=20
    python train.py sample --workdir runs/fashion --num 64 --out grid.png [--noema]
    python train.py sample --workdir runs/sweep --member 3      # a population run's member
    python train.py sample --workdir runs/progan_anime --growth [--num 8]
    python train.py classify --workdir runs/cls_mnist digit.png photo.jpg [--top 5]
    python train.py classify --config classifiers_jax/configs/resnet50_imagenet.py photo.jpg
    python train.py translate --workdir runs/facemask --direction a2b face.png [--out DIR]
    python train.py eval --workdir runs/fashion [--num 10000] [--judge_workdir runs/cls_fm]
        [--inception]
    python train.py floor --config classifiers_jax/configs/cifar10.py [--split train]
        [--num 10000] [--judge_workdir DIR] [--workdir DIR]
    python train.py reconstruct --workdir runs/ae_cifar10 a.png b.jpg [--out DIR]
    python train.py features --workdir runs/ae_cifar10 --split test --out test.npz

`eval` scores a GAN run's latest checkpoint as its config's `metrics` section says (the flags
override it): judge and/or Inception FID and KID, mode coverage, each with its protocol.
`translate` runs a CycleGAN run's generator (a2b or b2a) on image files and writes one PNG per
input, named <name>_<direction>.png, into --out (default <workdir>/translated).
`floor` scores real images of --split against the config's reference split (metrics section;
test by default) the same way: the FID a perfect generator would reach; with --workdir it
also goes into <workdir>/summary.json "floor".
`reconstruct` runs an autoencoder run on image files and writes one PNG per input, the image
(centre-cropped and resized to the run's size, as in training, with a log line when it had
another size) beside its reconstruction, named <name>_recon.png, into --out (default
<workdir>/reconstructed).
`features` writes --out (.npz): `features` [N, D] float32 and `labels` [N] of a whole --split
and `protocol` (a JSON string: run, step, split, resolution, feature dim) from the hook
`extract_features(config, workdir, split)` of the run's trainer module. The config is the
latest checkpoint's (else --config, for a network that needs no training). Computed once per
checkpoint into <workdir>/features/<split>-<step>.npz and reused.
`--member i` picks member i of a population run (docs/populations.md) for sample, eval and
classify; eval without it scores every member and names the best.
Training resumes from the latest checkpoint in --workdir. Errors caused by the input are
printed as one line that names the fix (exit status 2); a diverged run exits with status 3.
Mistakes in the flags and the config (a missing config file, an unknown variant or key, an
unknown choice for an enumerated option, a negative count) are refused at start-up, before any
data is read or any JAX device exists.
"""

from __future__ import annotations

import difflib
import importlib
import logging as std_logging
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

# Keep TensorFlow (used only for tf.data) quiet and off any GPU before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from common_jax.errors import UserError  # noqa: E402

COMMANDS = ("train", "sample", "classify", "eval", "floor", "translate", "reconstruct",
            "features")
TAKES_FILES = ("classify", "translate", "reconstruct")  # their arguments are image files
ROOT = Path(__file__).resolve().parent
CONFIG_FOLDERS = ("gans_jax/configs", "classifiers_jax/configs", "autoencoders_jax/configs")
log = std_logging.getLogger("__main__")

config_flags.DEFINE_config_file("config", None, "Config file, optionally path.py:variant.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples, logs and summary.")
flags.DEFINE_integer("num", 64, "sample: number of images; eval: number of samples scored "
                     "(default: the run's metrics.num_samples).")
flags.DEFINE_string("out", None, "sample: output PNG (default <workdir>/sample.png); "
                    "translate: output folder (default <workdir>/translated); reconstruct: "
                    "output folder (default <workdir>/reconstructed); features: the .npz.")
flags.DEFINE_bool("ema", True, "sample, eval: use the generator's moving-average weights "
                  "(--noema: the raw generator's; eval writes its scores as eval_raw_*).")
flags.DEFINE_integer("step", None, "sample, eval, classify, translate, reconstruct: the "
                     "checkpoint saved at this step (default: the latest).")
flags.DEFINE_bool("growth", False, "sample: a ProGAN run's growth strip instead: the same "
                  "z at every resolution reached (default --out <workdir>/growth.png).")
flags.DEFINE_integer("seed", 0, "sample: seed of the latent vectors.")
flags.DEFINE_integer("top", 5, "classify: classes shown per image, most likely first.")
flags.DEFINE_string("judge_workdir", None, "eval: a classifier run to judge the samples with "
                    "(default: the run's metrics.judge_workdir; \"\" for none).")
flags.DEFINE_bool("inception", None, "eval: also score with the FID Inception network "
                  "(default: the run's metrics.inception).")
flags.DEFINE_string("split", "train", "floor: the real split scored against the reference one; "
                    "features: the split whose features are written.")
flags.DEFINE_string("direction", "a2b", "translate: a2b (domain A to B) or b2a.")
flags.DEFINE_integer("member", None, "sample, eval, classify: member i (0..K-1) of a "
                     "population run; eval without it scores every member.")
MEMBER_COMMANDS = ("sample", "eval", "classify")
FLAGS = flags.FLAGS


def trainer_module(config):
    """The module named by ``config.trainer`` (e.g. gans_jax.trainers.dcgan)."""
    try:
        return importlib.import_module(config.trainer)
    except ModuleNotFoundError as error:
        # Only a name that is not there; a trainer that fails to import its own dependencies
        # keeps its traceback.
        if error.name is None or not f"{config.trainer}.".startswith(f"{error.name}."):
            raise
        raise UserError(f"unknown trainer '{config.trainer}'; set --config.trainer to "
                        "gans_jax.trainers.dcgan, classifiers_jax.trainers.classifier or "
                        "autoencoders_jax.trainers.autoencoder") from None


def checked_trainer():
    """The train command's trainer module, once the config's enumerated options and counts are
    known to be valid: importing it neither reads data nor creates a JAX device."""
    if FLAGS.config is None:
        raise_usage("train needs --config path.py[:variant]")
    from common_jax.config_utils import check_choices, check_counts

    trainer = trainer_module(FLAGS.config)
    # A trainer without CONFIG_CHOICES (one written elsewhere) gets the other checks only.
    check_choices(FLAGS.config, getattr(trainer, "CONFIG_CHOICES", {}))
    check_counts(FLAGS.config)
    return trainer


def start_jax(command: str) -> None:
    """Joins a multi-process job, then asks for one CPU device per core (train, eval, floor).

    Both only work before JAX creates its devices, so nothing before this touches them: the
    multi-process set-up must come first of all, and the CPU device count divides each
    process's share of the batch, which needs the process count.
    """
    from common_jax import parallel

    parallel.maybe_initialize_distributed()
    if command == "train":
        parallel.use_cpu_cores(train_batch_sizes(FLAGS.config))
    elif command in ("eval", "floor", "translate", "reconstruct", "features"):
        # sampling, features and translation pad their batches to the device count
        parallel.use_cpu_cores(())


def train_batch_sizes(config) -> tuple[int, ...]:
    """Every global batch size a run trains or evaluates with (a growing GAN has one per
    resolution, in schedule.batch_sizes)."""
    schedule = config.get("schedule") or {}
    return (config.get("batch_size", 0), config.get("eval_batch_size", 0),
            *schedule.get("batch_sizes", ()))


def run_train(trainer) -> None:
    summary = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    log.info("done: step %s, %s images/s; outputs in %s", summary["final_step"],
             summary["images_per_s"], FLAGS.workdir)
    best = summary.get("population", {}).get("best")
    if best is not None:
        log.info("best member: %d (%s %.6g); pick it with --member %d", best["member"],
                 best["by"], best["value"], best["member"])


def restore_run(workdir: str):
    """(config, state, trainer) of the latest checkpoint in workdir. With --member, that member
    of a population run, as a single run's config and state; a population stays whole without
    it (the caller decides whether it can use one)."""
    from common_jax import population
    from common_jax.checkpoint import restore_for_inference

    config, state, trainer = restore_for_inference(workdir, trainer_module, step=FLAGS.step)
    if not isinstance(state, population.PopulationState):
        if FLAGS.member is not None:
            raise_usage(f"{workdir} holds a single run, not a population; leave out --member")
        return config, state, trainer
    if FLAGS.member is None:
        return config, state, trainer
    population.check_member(FLAGS.member, population.count(state))
    return (population.member_config(config, FLAGS.member),
            population.member(state, FLAGS.member), trainer)


def one_network(state, command: str) -> None:
    """Refuses a whole population where one network is needed, naming --member."""
    from common_jax import population

    if isinstance(state, population.PopulationState):
        k = population.count(state)
        raise_usage(f"{FLAGS.workdir} holds a population of {k} members; choose one with "
                    f"--member (0 to {k - 1}) for {command}")


def run_sample() -> None:
    config, state, trainer = restore_run(FLAGS.workdir)
    if hasattr(trainer, "translate_files"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which translates images "
                    "instead of sampling them; use: python train.py translate --workdir "
                    f"{FLAGS.workdir} --direction a2b IMG... --out DIR")
    if not hasattr(trainer, "generate"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not generate "
                    "images; give the --workdir of a GAN run")
    if FLAGS.growth:
        return run_growth(config, state, trainer)
    one_network(state, "sample")
    images = trainer.generate(state, trainer.sample_z(config, FLAGS.num, FLAGS.seed), config,
                              use_ema=FLAGS.ema)
    from common_jax.writers import save_image_grid

    name = "sample.png" if FLAGS.member is None else f"sample_member{FLAGS.member}.png"
    out = FLAGS.out or os.path.join(FLAGS.workdir, name)
    scale = max(1, 128 // images.shape[1])
    save_image_grid(images, out, scale=scale)
    member = "" if FLAGS.member is None else f" of member {FLAGS.member}"
    print(f"wrote {len(images)} samples{member} from step {int(state.step)} "
          f"({'EMA' if FLAGS.ema else 'raw'} weights) to {out}")


def run_growth(config, state, trainer) -> None:
    """Writes a ProGAN run's growth strip: rows of z, one column per resolution reached."""
    if not hasattr(trainer, "save_growth_strip"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not grow; "
                    "--growth needs a ProGAN run")
    num = FLAGS.num if FLAGS["num"].present else trainer.GROWTH_SAMPLES
    out = FLAGS.out or os.path.join(FLAGS.workdir, "growth.png")
    trainer.save_growth_strip(state, config, out, num=num, seed=FLAGS.seed)
    print(f"wrote the growth strip of {num} samples from step {int(state.step)} (EMA "
          f"weights) to {out}")


def run_classify(paths: list[str]) -> None:
    """Prints the most likely classes of each image file under the latest checkpoint."""
    if not paths:
        raise_usage("classify needs image files: python train.py classify --workdir DIR "
                    "a.png b.jpg [--top 5]")
    if FLAGS.top < 1:
        raise_usage(f"--top must be at least 1, got {FLAGS.top}")
    check_files(paths)  # before the slow checkpoint restore
    if FLAGS.workdir is None:  # a pretrained network named by --config
        trainer = trainer_module(FLAGS.config)
        if not hasattr(trainer, "pretrained_state"):
            raise_usage(f"{FLAGS.config.trainer} has no pretrained networks; give --workdir")
        state, config, meta = trainer.pretrained_state(FLAGS.config)
        print(f"weights {meta['path']} (sha256 {meta['sha256'][:12]}, {meta['layout']})")
    else:
        config, state, trainer = restore_run(FLAGS.workdir)
        if not hasattr(trainer, "classify_files"):
            raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not "
                        "classify; give the --workdir of a classifier run")
        one_network(state, "classify")
        member = "" if FLAGS.member is None else f", member {FLAGS.member}"
        print(f"checkpoint step {int(state.step)} in {FLAGS.workdir}{member}")
    for path, ranked in zip(paths, trainer.classify_files(state, config, paths), strict=True):
        print(path)
        for name, probability in ranked[:FLAGS.top]:
            print(f"  {probability:8.2%}  {name}")


def run_translate(paths: list[str]) -> None:
    """Translates image files with a CycleGAN run's latest checkpoint, one PNG per input."""
    from common_jax.checkpoint import restore_for_inference

    if not paths:
        raise_usage("translate needs image files: python train.py translate --workdir DIR "
                    "--direction a2b a.png b.jpg [--out DIR]")
    if FLAGS.direction not in ("a2b", "b2a"):
        raise_usage(f"unknown direction '{FLAGS.direction}'; set --direction to a2b (domain A "
                    "to B) or b2a")
    check_files(paths)  # before the slow checkpoint restore
    config, state, trainer = restore_for_inference(FLAGS.workdir, trainer_module,
                                                   step=FLAGS.step)
    if not hasattr(trainer, "translate_files"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not translate "
                    "images; give the --workdir of a CycleGAN run")
    out = FLAGS.out or os.path.join(FLAGS.workdir, "translated")
    written = trainer.translate_files(state, config, paths, out, direction=FLAGS.direction)
    print(f"translated {len(written)} images {FLAGS.direction} with the checkpoint of step "
          f"{int(state.step)}; wrote them to {out}")


def run_reconstruct(paths: list[str]) -> None:
    """Reconstructs image files with an autoencoder run's latest checkpoint, one PNG each."""
    from common_jax.checkpoint import restore_for_inference

    if not paths:
        raise_usage("reconstruct needs image files: python train.py reconstruct --workdir DIR "
                    "a.png b.jpg [--out DIR]")
    check_files(paths)  # before the slow checkpoint restore
    config, state, trainer = restore_for_inference(FLAGS.workdir, trainer_module,
                                                   step=FLAGS.step)
    if not hasattr(trainer, "reconstruct_files"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not reconstruct "
                    "images; give the --workdir of an autoencoder run")
    out = FLAGS.out or os.path.join(FLAGS.workdir, "reconstructed")
    written = trainer.reconstruct_files(state, config, paths, out)
    print(f"reconstructed {len(written)} images (original | reconstruction) with the "
          f"checkpoint of step {int(state.step)}; wrote them to {out}")


def features_source(workdir: str):
    """(config, checkpoint step or None) for `features`: the latest checkpoint's config, else
    --config (a network used as it is built, e.g. from pretrained weights)."""
    import ml_collections

    from common_jax.checkpoint import Checkpointer

    if (Path(workdir) / "checkpoints").is_dir():
        checkpointer = Checkpointer(workdir, asynchronous=False)
        try:
            steps = checkpointer.steps()
            if steps:
                meta = checkpointer.read_meta(steps[-1])
                return ml_collections.ConfigDict(meta["config"]), steps[-1]
        finally:
            checkpointer.close()
    if FLAGS.config is None:
        raise_usage(f"no checkpoint in {workdir}; train first, or give --config for a network "
                    "that needs no training")
    return FLAGS.config, None


def run_features() -> None:
    """Writes a split's features, labels and protocol (.npz), computed once per checkpoint."""
    import hashlib
    import json
    import shutil

    import numpy as np

    if not FLAGS.out:
        raise_usage("features needs --out FILE.npz: python train.py features --workdir DIR "
                    "--split test --out test.npz")
    config, step = features_source(FLAGS.workdir)
    trainer = trainer_module(config)
    if not hasattr(trainer, "extract_features"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which has no features "
                    "hook (extract_features); give the --workdir of a run that has one")
    # Without a checkpoint the config alone fixes the network: it names the cache instead.
    tag = step if step is not None else "config-" + hashlib.sha256(
        config.to_json(sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(FLAGS.workdir) / "features" / f"{FLAGS.split}-{tag}.npz"
    if cache.is_file():
        log.info("reusing %s", cache)
    else:
        features, labels, extra = trainer.extract_features(config, FLAGS.workdir, FLAGS.split)
        features = np.asarray(features, np.float32).reshape(len(features), -1)
        protocol = {"run": str(Path(FLAGS.workdir).resolve()), "step": step,
                    "split": FLAGS.split, "resolution": config.model.get("image_size"),
                    "feature_dim": int(features.shape[1]), "num_examples": len(features),
                    **extra}
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npz")  # a killed run leaves no half file behind
        np.savez(partial, features=features, labels=np.asarray(labels, np.int64),
                 protocol=json.dumps(protocol))
        partial.replace(cache)
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.resolve() != cache.resolve():
        shutil.copyfile(cache, out)
    with np.load(out) as data:
        shape = data["features"].shape
    print(f"wrote features {shape[0]} x {shape[1]} of split '{FLAGS.split}' "
          f"(checkpoint step {step}) to {out}")


def run_eval() -> None:
    """Scores the latest checkpoint's (or --step's) EMA generator, or with --noema its raw one,
    as its config's `metrics` section says (the flags override it) and prints the scores with
    their protocol."""
    num = scored_num("eval")
    config, state, trainer = restore_run(FLAGS.workdir)
    if not hasattr(trainer, "evaluate_checkpoint"):
        raise_usage(f"{FLAGS.workdir} holds a {config.trainer} run, which does not generate "
                    "images; give the --workdir of a GAN run")
    member = {} if FLAGS.member is None else {"member": FLAGS.member}
    result = trainer.evaluate_checkpoint(config, state, FLAGS.workdir, num=num,
                                         judge_workdir=FLAGS.judge_workdir,
                                         inception=FLAGS.inception, use_ema=FLAGS.ema,
                                         **member)
    from gans_jax.evaluation import describe, describe_population, eval_name

    name = eval_name(FLAGS.ema)
    which = f"{'EMA' if FLAGS.ema else 'raw'} generator"
    if FLAGS.member is not None:
        which = f"member {FLAGS.member}'s {which}"
    print(f"checkpoint step {result['step']} in {FLAGS.workdir} ({which})")
    for line in describe_population(result) if "members" in result else describe(result):
        print(line)
    print(f"wrote summary.json \"{name}\" and {name}_* scalars (TensorBoard, metrics.jsonl) in "
          f"{FLAGS.workdir}")


def run_floor() -> None:
    """Scores real images as if generated and prints the scores, their protocol and timing."""
    from gans_jax import evaluation

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


def check_files(paths: list[str]) -> None:
    """Refuses image files that do not exist, naming them all."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise_usage(f"image file{plural} not found: {', '.join(missing)}; check the "
                    f"path{plural}")


def raise_usage(message: str) -> None:
    raise UserError(message)


def fail(message: str) -> NoReturn:
    """Prints `message` as the one line "error: ..." and exits with status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def configure_logging() -> None:
    """Our messages at INFO; libraries (Orbax, TensorFlow) only at WARNING and above."""
    logging.set_verbosity(logging.WARNING)
    for package in ("common_jax", "gans_jax", "classifiers_jax", "autoencoders_jax",
                    "__main__"):
        std_logging.getLogger(package).setLevel(std_logging.INFO)


def check_command(command: str, arguments: list[str], argv: list[str]) -> None:
    """Refuses an unknown command and the flags a command cannot run without."""
    if command not in COMMANDS or (arguments and command not in TAKES_FILES):
        raise_usage(f"unknown command {' '.join(argv[1:])!r}; use one of: "
                    f"{', '.join(COMMANDS)}")
    pretrained = command == "classify" and FLAGS.config is not None  # no run needed
    if not FLAGS.workdir and command != "floor" and not pretrained:
        raise_usage("--workdir is required (where checkpoints and outputs go)")
    if command == "floor" and FLAGS.config is None:
        raise_usage("floor needs --config path.py[:variant] (its data and metrics sections)")
    if FLAGS.member is not None and command not in MEMBER_COMMANDS:
        raise_usage(f"--member picks a population run's member for {', '.join(MEMBER_COMMANDS)}"
                    f", not for {command}; leave it out")
    if FLAGS.member is not None and FLAGS.member < 0:
        raise_usage(f"--member must be 0 or more, got {FLAGS.member}")


def main(argv) -> None:
    configure_logging()
    from common_jax.loop import TrainingDiverged

    command = argv[1] if len(argv) > 1 else "train"
    arguments = argv[2:]  # only classify, translate and reconstruct take any: image files
    try:
        check_command(command, arguments, argv)
        trainer = checked_trainer() if command == "train" else None
        start_jax(command)
        if command == "train":
            run_train(trainer)
        elif command == "classify":
            run_classify(arguments)
        elif command == "translate":
            run_translate(arguments)
        elif command == "reconstruct":
            run_reconstruct(arguments)
        else:
            {"sample": run_sample, "eval": run_eval, "floor": run_floor,
             "features": run_features}[command]()
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    except UserError as error:
        fail(str(error))


# ----------------------------------------------------------------------------- flag parsing


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (app.run's flags_parser), with each mistake reported as one line
    "error: ..." and exit status 2 instead of a traceback or absl's usage text.

    ml_collections loads the --config file and applies the --config.<key> overrides while absl
    parses the flags, before main: a missing file only fails later, on first use of the config;
    an unknown key raises AttributeError; config files raise UserError for unknown variants.
    """
    try:
        check_config_file(argv)
        return FLAGS(argv)
    except UserError as error:
        fail(str(error))
    except (AttributeError, KeyError):
        message = unknown_override_message(argv)
        if message is None:  # not an override naming no key: a bug, keep its traceback
            raise
        fail(message)
    except flags.Error as error:
        fail(flag_error_message(error))


def config_argument(argv: list[str]) -> str | None:
    """The value of the last --config in argv (flag files expanded as absl does), or None."""
    args = FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
    value = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        match = re.fullmatch(r"--?config(?:=(.*))?", arg, re.DOTALL)
        if match:
            value = match.group(1) if match.group(1) is not None else (
                args[i + 1] if i + 1 < len(args) else None)
    return value


def override_keys(argv: list[str]) -> list[str]:
    """The dotted keys of the --config.<key>=... (and --noconfig.<key>) flags, in order."""
    args = FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
    matches = (re.match(r"--?(?:no)?config\.([^=]+)", arg) for arg in args)
    return [match.group(1) for match in matches if match]


def check_config_file(argv: list[str]) -> None:
    """Refuses a --config file that does not exist, suggesting close names in its folder."""
    spec = config_argument(argv)
    if spec is None:
        return
    path = spec.split(":", 1)[0]
    if os.path.isfile(path):
        return
    folder = os.path.dirname(path)
    close = difflib.get_close_matches(os.path.basename(path), config_files(folder or "."), n=3)
    if close:
        fix = "did you mean " + " or ".join(os.path.join(folder, n) for n in close) + "?"
    else:
        folders = " or ".join(f"{os.path.relpath(ROOT / f)}/" for f in CONFIG_FOLDERS)
        fix = f"give --config one of the config files in {folders}"
    raise UserError(f"config file '{path}' not found; {fix}")


def config_files(folder: str) -> list[str]:
    """The names of the config files in `folder`: .py files with a get_config (not dcgan_base)."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_"))
    return [n for n in names if "def get_config(" in Path(folder, n).read_text(errors="replace")]


def unknown_override_message(argv: list[str]) -> str | None:
    """The one line naming the first --config.<key> the config lacks, None if there is none."""
    from common_jax.config_utils import check_keys

    config = FLAGS["config"].parser.parse(config_argument(argv))
    try:
        check_keys(config, override_keys(argv))
    except UserError as error:
        return str(error)
    return None


def flag_error_message(error: Exception) -> str:
    """absl's message for a bad flag as one line; a longer one (a config file that raised) is
    printed in full first, since its traceback is what locates the mistake."""
    message = str(error).strip()
    if "\n" in message:
        print(message, file=sys.stderr)
        return ("the flags could not be parsed (details above); fix the config file or flag "
                "named there")
    return f"{message}; python train.py --helpshort lists the flags"


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
