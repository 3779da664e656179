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
- CycleGAN, as `gans_jax.trainers.cyclegan` (the reference's step): one Adam over both
  generators, updated with the discriminators frozen (no gradients for their weights) on LSGAN
  terms, cycle L1 and identity L1, each generator run once on its domain's and the other
  domain's images concatenated, then once on the other's fakes; then one Adam over both
  discriminators on real images and the step's fakes passed through a 50-image pool per domain,
  real and pooled fake in one pass, the loss halved. The pool is the reference's: filled first,
  then each fake swaps with a random stored one half of the time. Learning rate at its peak.
- autoencoder: the mean squared reconstruction error, Adam at the peak learning rate.
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


class ImagePool:
    """The reference's pool of past fakes, one image at a time, with its own seeded draws."""

    def __init__(self, torch, size: int, seed: int, memory_format):
        import random

        self.torch, self.size, self.images = torch, size, []
        self.memory_format = memory_format
        self.random = random.Random(seed)

    def query(self, fakes):
        """Detached fakes [B, C, S, S] -> the images D sees, of the same shape."""
        if self.size == 0:
            return fakes
        out = []
        for fake in fakes:
            if len(self.images) < self.size:  # filling up: store it and show it
                self.images.append(fake.clone())
                out.append(fake)
            elif self.random.random() > 0.5:  # show a stored fake, keep this one instead
                slot = self.random.randrange(self.size)
                out.append(self.images[slot])
                self.images[slot] = fake.clone()
            else:
                out.append(fake)
        # Stacking loses channels_last; D's input must keep the layout chosen for it.
        return self.torch.stack(out).contiguous(memory_format=self.memory_format)


def _synthetic_images(torch, config, memory_format):
    m = config.model
    return (torch.rand(config.batch_size, m.channels, m.image_size, m.image_size) * 2 - 1
            ).contiguous(memory_format=memory_format)


def cyclegan_step(torch, config, nets, memory_format) -> Callable[[], None]:
    """One CycleGAN train step on fixed synthetic batches of both domains, as
    `gans_jax.trainers.cyclegan.train_step`."""
    import itertools

    import torch.nn.functional as F

    o, loss_cfg, batch = config.optimizer, config.loss, config.batch_size
    g_ab, g_ba, d_a, d_b = (nets[k] for k in ("g_ab", "g_ba", "d_a", "d_b"))
    g_opt = _adam(torch, itertools.chain(g_ab.parameters(), g_ba.parameters()), o.lr, o.b1, o.b2)
    d_params = list(itertools.chain(d_a.parameters(), d_b.parameters()))
    d_opt = _adam(torch, d_params, o.lr, o.b1, o.b2)
    real_a = _synthetic_images(torch, config, memory_format)
    real_b = _synthetic_images(torch, config, memory_format)
    pool_a = ImagePool(torch, config.pool_size, config.seed, memory_format)
    pool_b = ImagePool(torch, config.pool_size, config.seed + 1, memory_format)
    identity = loss_cfg.identity > 0

    def run_g(g, own, other):  # (fake, identity image or None): one pass, as the JAX step
        if not identity:
            return g(own), None
        out = g(torch.cat([own, other]))
        return out[:batch], out[batch:]

    def lsgan_g(logits):  # the reference's MSE to 1 over every patch
        return torch.mean((logits - 1.0) ** 2)

    def lsgan_d(d, real, fake):  # half the sum of the real and fake terms, one pass
        real_logits, fake_logits = d(torch.cat([real, fake])).split(batch)
        return 0.5 * (torch.mean((real_logits - loss_cfg.real_label) ** 2)
                      + torch.mean(fake_logits**2))

    def run() -> None:
        for p in d_params:  # D frozen: G's backward pass computes no D weight gradients
            p.requires_grad_(False)
        g_opt.zero_grad(set_to_none=True)
        fake_b, idt_b = run_g(g_ab, real_a, real_b)
        fake_a, idt_a = run_g(g_ba, real_b, real_a)
        rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
        g_loss = (lsgan_g(d_b(fake_b)) + lsgan_g(d_a(fake_a))
                  + loss_cfg.lambda_a * F.l1_loss(rec_a, real_a)
                  + loss_cfg.lambda_b * F.l1_loss(rec_b, real_b))
        if identity:
            g_loss = g_loss + loss_cfg.identity * (loss_cfg.lambda_a * F.l1_loss(idt_a, real_a)
                                                   + loss_cfg.lambda_b * F.l1_loss(idt_b, real_b))
        g_loss.backward()
        g_opt.step()
        for p in d_params:
            p.requires_grad_(True)
        d_opt.zero_grad(set_to_none=True)
        pooled_a, pooled_b = pool_a.query(fake_a.detach()), pool_b.query(fake_b.detach())
        d_loss = lsgan_d(d_a, real_a, pooled_a) + lsgan_d(d_b, real_b, pooled_b)
        d_loss.backward()
        d_opt.step()

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


def autoencoder_step(torch, config, net, memory_format) -> Callable[[], None]:
    """One autoencoder train step (MSE, Adam) on a fixed synthetic batch."""
    m, o = config.model, config.optimizer
    opt = _adam(torch, net.parameters(), o.lr, o.b1, o.b2)
    images = (torch.rand(config.batch_size, m.channels, m.image_size, m.image_size) * 2 - 1
              ).contiguous(memory_format=memory_format)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((net(images) - images) ** 2)
        loss.backward()
        opt.step()

    return run


def build_step(torch, config, memory_format, *, compile: bool) -> Callable[[], None]:
    """Fresh, seeded twin networks and their train step, optionally under torch.compile."""
    from benchmarks import torch_models, torch_progan

    torch.manual_seed(config.seed)
    if config.trainer == torch_progan.TRAINER:
        nets = {k: net.to(memory_format=memory_format).train()
                for k, net in torch_progan.from_config(config).items()}
        if compile:
            nets = {k: torch.compile(net, dynamic=False) for k, net in nets.items()}
        return torch_progan.train_step(config, nets["g"], nets["d"], memory_format)
    if config.trainer == torch_models.CYCLEGAN_TRAINER:
        nets = {k: net.to(memory_format=memory_format).train()
                for k, net in torch_models.cyclegan_from_config(config).items()}
        if compile:
            # Static shapes: each network meets two batch sizes (b and 2b) and D two
            # requires_grad settings, one graph each instead of a dynamic-shape recompile.
            nets = {k: torch.compile(net, dynamic=False) for k, net in nets.items()}
        return cyclegan_step(torch, config, nets, memory_format)
    if config.trainer == torch_models.AUTOENCODER_TRAINER:
        net = torch_models.autoencoder_from_config(config).to(memory_format=memory_format)
        net = net.train()
        return autoencoder_step(torch, config, torch.compile(net) if compile else net,
                                memory_format)
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


def runner(step: Callable[[], None]) -> Callable[[int], None]:
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
    batch = common.batch_size(config)
    info["threads"] = torch.get_num_threads()
    out = [common.Contestant("torch_eager", runner(build_step(torch, config, fmt,
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
            out.append(common.Contestant("torch_compile", runner(step), batch, compiled_info))
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
        print(f"{name} ({spec}, batch {common.batch_size(config)})")
        entry = {"config": spec, "batch": common.batch_size(config),
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
