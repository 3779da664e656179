"""PyTorch baselines: the train step of each registered model's PyTorch twin
(`benchmarks.torch_models`), eager and under `torch.compile`, on a synthetic batch.

    python -m benchmarks.torch_baselines                    # PyTorch alone, every model
    python -m benchmarks.torch_baselines --only dcgan_anime --no-compile
    python -m benchmarks.torch_baselines --tiny

The step does what the JAX step does, with the same optimizer settings and batch:
- DCGAN: G's forward pass once; D (Adam) on the real batch and the detached fake batch with
  BCE; G (Adam) through the updated D with the non-saturating loss, the gradient taken with
  respect to the fake images only (D's weights get none) and pulled back through G's forward
  pass; then G's moving average of the weights with the same warm-up of the decay.
- classifiers: cross-entropy with the configured label smoothing; SGD (momentum, Nesterov),
  Adam or AdamW with weight decay on kernels only, as `classifiers_jax` configures it. The
  learning rate stays at its peak (a schedule costs nothing measurable).
The memory layout (NCHW or channels_last) is chosen per model by timing both for two steps in
eager mode; `torch.compile` compiles the networks (forward and backward) and runs with that
layout, its compile time reported separately; a failure is recorded with its reason.

`benchmarks.train_step` runs these same contestants in rounds alternating with the JAX step and
reports the ratios; this script times PyTorch alone (torch_baselines_<tag>.json). Without
PyTorch (`pip install -e ".[bench]"`) the record says "skipped: torch not installed".
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from benchmarks import common

NOT_INSTALLED = "skipped: torch not installed"


# ----------------------------------------------------------------------------- steps


def _adam(torch, params, lr: float, b1: float, b2: float):
    return torch.optim.Adam(params, lr=lr, betas=(b1, b2))


def classifier_optimizer(torch, config, net):
    """SGD / Adam / AdamW as `classifiers_jax.trainers.classifier.make_optimizer` configures
    them: L2 (or decoupled) weight decay on kernels only, never on biases or norm scales."""
    o = config.optimizer
    kernels = [p for p in net.parameters() if p.ndim > 1]
    others = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": kernels, "weight_decay": o.weight_decay},
              {"params": others, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                               nesterov=bool(o.nesterov and o.momentum))
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=(o.b1, o.b2))
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2))
    raise ValueError(f"no PyTorch optimizer for '{o.name}'")


def dcgan_step(torch, config, g, d, memory_format) -> Callable[[], None]:
    """One DCGAN train step on a fixed synthetic real batch, as `gans_jax.trainers.dcgan`."""
    import torch.nn.functional as F

    m, o, batch = config.model, config.optimizer, config.batch_size
    g_opt = _adam(torch, g.parameters(), o.g_lr, o.b1, o.b2)
    d_opt = _adam(torch, d.parameters(), o.d_lr, o.b1, o.b2)
    g_params = list(g.parameters())
    ema = [p.detach().clone() for p in g_params]
    real = (torch.rand(batch, m.channels, m.image_size, m.image_size) * 2 - 1).contiguous(
        memory_format=memory_format)
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    step = [0]

    def run() -> None:
        fake = g(torch.randn(batch, m.z_dim))
        d_opt.zero_grad(set_to_none=True)
        d_loss = (F.binary_cross_entropy_with_logits(d(real), ones)
                  + F.binary_cross_entropy_with_logits(d(fake.detach()), zeros))
        d_loss.backward()
        d_opt.step()
        g_opt.zero_grad(set_to_none=True)
        g_loss = F.binary_cross_entropy_with_logits(d(fake), ones)
        # Only the fake images' gradient, as the JAX step takes it: D's weights get none.
        (fake_grad,) = torch.autograd.grad(g_loss, fake)
        fake.backward(fake_grad)
        g_opt.step()
        decay = min(config.ema_decay, (1.0 + step[0]) / (10.0 + step[0]))
        with torch.no_grad():
            torch._foreach_lerp_(ema, g_params, 1.0 - decay)
        step[0] += 1

    return run


def classifier_step(torch, config, net, memory_format) -> Callable[[], None]:
    """One classifier train step on a fixed synthetic batch."""
    import torch.nn.functional as F

    m, batch = config.model, config.batch_size
    opt = classifier_optimizer(torch, config, net)
    images = (torch.rand(batch, m.channels, m.image_size, m.image_size) * 2 - 1).contiguous(
        memory_format=memory_format)
    labels = torch.randint(0, m.num_classes, (batch,))
    smoothing = float(config.loss.get("label_smoothing", 0.0))

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(images), labels, label_smoothing=smoothing)
        loss.backward()
        opt.step()

    return run


def build_step(torch, config, memory_format, *, compile: bool) -> Callable[[], None]:
    """Fresh, seeded twin networks and their train step, optionally under torch.compile."""
    from benchmarks import torch_models

    torch.manual_seed(config.seed)
    if common.family(config) == "gan":
        g, d = torch_models.dcgan_from_config(config)
        g.memory_format = memory_format
        g, d = (net.to(memory_format=memory_format).train() for net in (g, d))
        if compile:
            g, d = torch.compile(g), torch.compile(d)
        return dcgan_step(torch, config, g, d, memory_format)
    net = torch_models.classifier_from_config(config).to(memory_format=memory_format).train()
    if compile:
        net = torch.compile(net)
    return classifier_step(torch, config, net, memory_format)


# ----------------------------------------------------------------------------- contestants


def _runner(step: Callable[[], None]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            step()

    return run


def pick_memory_format(torch, config, log) -> tuple[object, dict]:
    """NCHW or channels_last, whichever runs an eager step faster (best of two, alternating,
    after two untimed steps each: the first steps pay for oneDNN's kernel set-up)."""
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    steps = {name: build_step(torch, config, fmt, compile=False) for name, fmt in formats.items()}
    for step in steps.values():
        step(), step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(2):
        for name, step in steps.items():
            times[name].append(1000 * common.timed(step))
    ms = {name: round(min(t), 2) for name, t in times.items()}
    best = min(ms, key=ms.get)
    log(f"  torch layout: {best} ({', '.join(f'{k} {v} ms/step' for k, v in ms.items())})")
    return formats[best], {"memory_format": best, "layout_probe_ms_per_step": ms}


def contestants(config, *, compile: bool = True, channels_last: str = "auto",
                log: Callable[[str], None] = print) -> tuple[list[common.Contestant], dict]:
    """(contestants to time, {name: reason} for the ones that cannot run)."""
    torch = common.import_torch()
    if torch is None:
        return [], {"torch": NOT_INSTALLED}
    from benchmarks import torch_models

    reason = torch_models.unsupported(config)
    if reason:
        return [], {"torch": f"skipped: {reason}"}
    if channels_last == "auto":
        fmt, info = pick_memory_format(torch, config, log)
    else:
        fmt = torch.channels_last if channels_last == "on" else torch.contiguous_format
        info = {"memory_format": "channels_last" if channels_last == "on" else "contiguous"}
    batch = config.batch_size
    info["threads"] = torch.get_num_threads()
    out = [common.Contestant("torch_eager", _runner(build_step(torch, config, fmt,
                                                               compile=False)), batch, dict(info))]
    skipped = {}
    if compile:
        try:
            torch._dynamo.reset()  # earlier models' graphs would count against the cache limit
            step = build_step(torch, config, fmt, compile=True)
            start = time.perf_counter()
            step()  # compiles G and D (or the classifier), forward and backward
            compiled_info = {**info, "compile_s": round(time.perf_counter() - start, 2),
                             "compiled": "networks (forward and backward); optimizers eager"}
            out.append(common.Contestant("torch_compile", _runner(step), batch, compiled_info))
        except Exception as e:  # noqa: BLE001 - inductor fails in many ways (no compiler, ...)
            skipped["torch_compile"] = f"failed: {common.first_line(e)}"
            log(f"  torch.compile {skipped['torch_compile']}")
    else:
        skipped["torch_compile"] = "skipped: --no-torch-compile"
    return out, skipped


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    common.add_common_args(parser)
    return common.shrink_if_tiny(parser.parse_args(argv))


def main(argv=None) -> dict:
    args = parse_args(argv)
    record = common.header("torch_baselines", args)
    record["results"] = {}
    for name, spec, config in common.model_configs(args):
        print(f"{name} ({spec}, batch {config.batch_size})")
        entry = {"config": spec, "batch": config.batch_size,
                 "config_values": common.config_values(config)}
        found, skipped = contestants(config, compile=not args.no_compile,
                                     channels_last=args.channels_last)
        for c in found:
            common.warm_up(c, warmup=args.warmup, steps=args.steps,
                           round_seconds=args.round_seconds)
        common.alternate(found, args.repeats)
        for c in found:
            entry[c.name] = common.result(c)
            print(f"  {c.name:14s} {entry[c.name].get('images_per_s', 0):9.1f} images/s")
        entry.update(skipped)
        record["results"][name] = entry
        if "torch" in skipped:
            print(f"  {skipped['torch']}")
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
