"""How much of a train step runs inside oneDNN, in JAX (the extension) and in PyTorch eager.

    python -m benchmarks.onednn_share --only dcgan_anime --only cls_mnist
    python -m benchmarks.onednn_share --tiny

Both frameworks compute their convolutions with oneDNN here, so a step splits into the time
inside oneDNN's primitives and the rest (the other operations, the framework's own overhead).
For each model, the JAX step (one CPU device, as `--devices 1`: oneDNN then gets every core, as
PyTorch's operations do) and its PyTorch twin (eager, channels_last) are timed in alternating
rounds in one process; then a few more steps of each run with oneDNN's verbose mode on, which
prints every primitive it executes with its time (`ONEDNN_VERBOSE`; switched on at run time:
`dnnl_set_verbose` in the extension's library, `torch.backends.mkldnn.verbose` in PyTorch's).
The record gives per framework the step time, the primitive time and count per step (mean
over `--verbose-steps`), and that time per kind of primitive and implementation (e.g.
`convolution jit:avx512_core backward_weights`), so two steps can be compared primitive by
primitive. Writes benchmarks/results/onednn_share_<tag>.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from benchmarks import common, torch_baselines
from benchmarks.train_step import JaxStep

DEFAULT = ["dcgan_anime", "dcgan_mnist", "cls_mnist", "cls_cifar10_fast"]


@contextlib.contextmanager
def captured_stdout(path: str) -> Iterator[None]:
    """The process's file descriptor 1 (where oneDNN prints) redirected to `path`."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


class Primitive(NamedTuple):
    """One executed primitive: "<primitive> <implementation> <propagation>", the problem it
    solved (oneDNN's descriptor, e.g. "mb64_ic256oc512_ih8oh4kh4sh2dh0ph1_iw8ow4kw4sw2dw0pw1",
    or a reorder's dimensions) and its time."""

    kind: str
    problem: str
    ms: float

    @property
    def operation(self) -> str:
        """Primitive, propagation and problem without the implementation: what was computed,
        whichever kernel computed it (to line up two libraries' calls)."""
        primitive, _, prop = self.kind.split(" ")
        return f"{primitive} {prop} {self.problem}"


def primitives(text: str) -> list[Primitive]:
    """Each executed primitive in oneDNN verbose output, either line format:
    "onednn_verbose,[v1,primitive,]exec,cpu,<primitive>,<impl>,<prop>,...,<problem>,<ms>"."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(",")
        if "exec" not in fields[:4] or not fields[0].endswith("verbose"):
            continue
        at = fields.index("exec")
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        out.append(Primitive(" ".join(fields[at + 2:at + 5]), fields[-2].strip(), ms))
    return out


def verbose_steps(step: Callable[[], None], verbose: Callable[[], Any], n: int) -> list:
    """The primitives of `n` steps run inside `verbose()` (a context with oneDNN's verbose
    mode on)."""
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        with captured_stdout(log.name), verbose():
            for _ in range(n):
                step()
        return primitives(open(log.name, errors="replace").read())


def onednn_library_verbose() -> Callable[[], Any] | None:
    """A context with the extension's oneDNN verbose mode on; None when no libdnnl is loaded."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libdnnl.so" in line}
    if not paths:
        return None
    library = ctypes.CDLL(sorted(paths)[0])

    @contextlib.contextmanager
    def verbose() -> Iterator[None]:
        library.dnnl_set_verbose(1)
        try:
            yield
        finally:
            library.dnnl_set_verbose(0)

    return verbose


def per_step(found: list[Primitive], key: Callable[[Primitive], str],
             steps: int) -> dict[str, dict[str, float]]:
    """{key: {"ms", "calls"}} per step, the largest time first."""
    ms: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    for p in found:
        ms[key(p)] += p.ms / steps
        calls[key(p)] += 1
    return {k: {"ms": round(v, 2), "calls": round(calls[k] / steps, 2)}
            for k, v in sorted(ms.items(), key=lambda kv: -kv[1])}


def summarise(contestant: common.Contestant, found: list[Primitive],
              steps: int) -> dict[str, Any]:
    """The timed figures, and the verbose steps' primitives per step: by kind (implementation
    included) and by operation (the problem solved, implementation left out)."""
    row = common.result(contestant)
    inside = sum(p.ms for p in found) / steps
    by_kind = per_step(found, lambda p: p.kind, steps)
    row.update({"onednn_ms": round(inside, 2), "onednn_primitives": len(found) // steps,
                "onednn_ms_by_kind": {k: v["ms"] for k, v in by_kind.items()},
                "onednn_by_operation": per_step(found, lambda p: p.operation, steps)})
    if row.get("ms_per_step"):
        row["outside_onednn_ms"] = round(row["ms_per_step"] - inside, 2)
    return row


def measure_model(config, args) -> dict[str, Any]:
    from common_jax import onednn

    jax_step = JaxStep(config, devices=1)
    contestants = [jax_step.contestant("jax")]
    torch = common.import_torch()
    twin = None
    if torch is not None:
        twin = torch_baselines.build_step(torch, config, torch.channels_last, compile=False)
        contestants.append(common.Contestant("torch_eager", torch_baselines.runner(twin),
                                             common.batch_size(config)))
    for c in contestants:
        common.warm_up(c, warmup=args.warmup, steps=args.steps,
                       round_seconds=args.round_seconds)
    common.alternate(contestants, args.repeats)
    entry: dict[str, Any] = {"batch": common.batch_size(config), "jax_devices": 1,
                             "onednn_custom_calls": jax_step.onednn_calls}
    verbose = onednn_library_verbose()
    if verbose is None or not jax_step.onednn_calls:
        entry["jax"] = {**common.result(contestants[0]),
                        "skipped": f"no oneDNN in the JAX step ({onednn.status()})"}
    else:
        found = verbose_steps(lambda: jax_step.run(1), verbose, args.verbose_steps)
        entry["jax"] = summarise(contestants[0], found, args.verbose_steps)
    if twin is None:
        entry["torch_eager"] = {"skipped": torch_baselines.NOT_INSTALLED}
    else:
        torch_verbose = lambda: torch.backends.mkldnn.verbose(  # noqa: E731
            torch.backends.mkldnn.VERBOSE_ON)
        found = verbose_steps(twin, torch_verbose, args.verbose_steps)
        entry["torch_eager"] = summarise(contestants[1], found, args.verbose_steps)
    jax_ms, torch_ms = (entry[k].get("ms_per_step") for k in ("jax", "torch_eager"))
    if jax_ms and torch_ms:
        entry["jax_speed_vs_torch"] = round(torch_ms / jax_ms, 3)
    return entry


@contextlib.contextmanager
def every_core_per_call() -> Iterator[None]:
    """oneDNN calls traced inside take every core this process may use (unless the variable
    is set): the one JAX device computes alone, as PyTorch's operations do, whatever number of
    CPU devices the process has."""
    from common_jax import onednn

    saved = os.environ.get(onednn.THREADS_ENV)
    if saved is None:
        os.environ[onednn.THREADS_ENV] = str(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        if saved is None:
            del os.environ[onednn.THREADS_ENV]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser, default=", ".join(DEFAULT))
    parser.add_argument("--verbose-steps", type=int, default=3,
                        help="steps run with oneDNN's verbose mode (their mean per step)")
    common.add_common_args(parser)
    args = common.shrink_if_tiny(parser.parse_args(argv))
    if args.tiny:
        args.verbose_steps = 1
    return args


def main(argv=None) -> dict:
    from common_jax import onednn

    args = parse_args(argv)
    record = common.header("onednn_share", args)
    record["results"] = {}
    for name, spec, config in common.model_configs(args, default=DEFAULT):
        with every_core_per_call():
            record["onednn_threads_per_call"] = onednn.threads()
            entry = measure_model(config, args)
        record["results"][name] = {"config": spec, **entry}
        for who in ("jax", "torch_eager"):
            r = entry[who]
            print(f"{name:18s} {who:12s} {r.get('ms_per_step', float('nan')):9.1f} ms/step, "
                  f"{r.get('onednn_ms', float('nan')):9.1f} ms in {r.get('onednn_primitives', 0)}"
                  f" oneDNN primitives, {r.get('outside_onednn_ms', float('nan')):8.1f} ms "
                  f"outside")
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
