"""Input pipeline throughput: the trainers' real data source and tf.data iterator alone
(images/s), and, used by `benchmarks.train_step`, end to end with the compiled train step.

    python -m benchmarks.input_pipeline                       # every registered model's data
    python -m benchmarks.input_pipeline --only dcgan_anime --batch 64
    python -m benchmarks.input_pipeline --tiny

The data is what the config names (`data.path`, else a prepared TFDS data set), loaded with
`common_jax.data.load_source` and batched with `make_train_iterator` exactly as
`common_jax.loop.train` does (seed, augmentation, batch per process). Loading the source
(reading idx files, listing and checking image files, extracting archives once) is timed
separately and not part of the throughput. When the data is absent the entry says so and is
skipped. Rounds come after a warm-up that fills tf.data's prefetch buffers; each round draws
batches for about `--round-seconds`.

End to end, each step takes the next batch from the iterator, places it on the devices and runs
the step, as the training loop does; compared with the step on a batch already on the device
(train_step) it shows whether training is input-bound. Writes input_pipeline_<tag>.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import common

_SOURCES: dict[tuple, Any] = {}  # data sources loaded in this process, shared by models


def absent_reason(config) -> str | None:
    """Why the config's real data cannot be read here, or None when it can."""
    path, name = str(config.data.get("path", "") or ""), str(config.data.get("tfds_name", "") or "")
    if path and Path(path).exists():
        return None
    if name and _tfds_prepared(name):
        return None
    where = f"{path} is missing" if path else "no data.path"
    tfds = f" and TFDS '{name}' is not prepared (needs a download)" if name else ""
    return f"skipped: real data absent ({where}{tfds})"


def _tfds_prepared(name: str) -> bool:
    data_dir = Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
    return (data_dir / name.split(":")[0].split("/")[0]).is_dir()


def load_source(config) -> tuple[Any, float]:
    """(the config's training source, seconds it took to load; 0 when loaded before)."""
    from common_jax import data as data_lib

    d = config.data
    key = (d.get("path", ""), d.get("tfds_name", ""), d.get("split", "train"),
           d.get("label_mode", "fine"), d.get("labels_from_subfolders", True))
    if key in _SOURCES:
        return _SOURCES[key], 0.0
    start = time.perf_counter()
    _SOURCES[key] = data_lib.load_source(d, split=d.split)
    return _SOURCES[key], time.perf_counter() - start


def train_iterator(config, source, batch_size: int):
    """The training loop's iterator for this config (this process's share of the batch)."""
    import jax

    from common_jax import data as data_lib

    m = config.model
    return data_lib.make_train_iterator(
        source, batch_size=batch_size, image_size=m.image_size, channels=m.channels,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), augment=config.data.get("augment", "none"))


def pipeline_contestant(config, source, batch_size: int) -> common.Contestant:
    """Draws batches from the iterator and does nothing else."""
    batches = train_iterator(config, source, batch_size)

    def run(n: int) -> None:
        for _ in range(n):
            next(batches)

    return common.Contestant("input_pipeline", run, batch_size)


def end_to_end_contestant(config, source, step) -> common.Contestant:
    """The loop's work per step: next batch -> onto the devices -> compiled step.

    `step` is a `train_step.JaxStep` (its compiled step, device state and DataParallel).
    """
    batches = train_iterator(config, source, step.dp.check_batch_size(config.batch_size))
    return common.Contestant("end_to_end", lambda n: step.run_on(batches, n), config.batch_size)


def measure(config, *, step=None, batch_size: int = 0, warmup: int = 2, steps: int = 0,
            repeats: int = 3, round_seconds: float = 1.0, log=print) -> dict:
    """Pipeline alone (and end to end when given the compiled `step`), one after the other so
    tf.data's threads never run during another measurement."""
    reason = absent_reason(config)
    if reason:
        log(f"  input: {reason}")
        return {"skipped": reason}
    try:
        source, load_s = load_source(config)
    except Exception as e:  # noqa: BLE001 - bad or unreadable data: record why, go on
        log(f"  input: could not load the data: {common.first_line(e)}")
        return {"skipped": f"could not load the data: {common.first_line(e)}"}
    out: dict[str, Any] = {"source": source.name, "num_examples": source.num_examples,
                           "source_load_s": round(load_s, 2),
                           "augment": config.data.get("augment", "none")}
    makers = [lambda: pipeline_contestant(config, source, batch_size or config.batch_size)]
    if step is not None:
        makers.append(lambda: end_to_end_contestant(config, source, step))
    for make in makers:
        c = make()
        common.warm_up(c, warmup=warmup, steps=steps, round_seconds=round_seconds)
        common.alternate([c], repeats, log)
        out[c.name] = common.result(c)
        log(f"  {c.name:14s} {out[c.name].get('images_per_s', 0):9.1f} ± "
            f"{out[c.name].get('images_per_s_std', 0):.1f} images/s")
        del c  # ends the iterator's background threads before the next measurement
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser)
    common.add_common_args(parser)
    return common.shrink_if_tiny(parser.parse_args(argv))


def main(argv=None) -> dict:
    args = parse_args(argv)
    record = common.header("input_pipeline", args)
    record["results"] = {}
    for name, spec, config in common.model_configs(args):
        batch = config.batch_size
        print(f"{name} ({spec}, batch {batch})")
        record["results"][name] = {
            "config": spec, "batch": batch, "config_values": common.config_values(config),
            **measure(config, batch_size=batch, warmup=args.warmup, steps=args.steps,
                      repeats=args.repeats, round_seconds=args.round_seconds)}
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
