"""The PyTorch twin of the ProGAN (gans_jax/models/progan.py) and of its train step
(gans_jax/trainers/progan.py), for `benchmarks.train_step`'s side-by-side rounds.

The twin has every resolution's layers, as the Flax networks do (equalized-lr convolutions and
dense layers with weights N(0, 1) scaled at run time, pixel norm, LeakyReLU 0.2, nearest
upsampling, 2x2 average pooling, minibatch stddev over groups of consecutive examples, toRGB /
fromRGB per resolution), so the parameter counts are equal. It runs at the config's final
resolution with the fade-in blend computed (both paths, as the JAX step computes them whatever
alpha is). The step: G's forward pass once; D (Adam, beta1 0, beta2 0.99) on WGAN-GP with the
drift term on the faded reals and the detached fakes; G through the updated D, the gradient
taken with respect to the fake images only; then G's moving average.

Not run on its own: imported by `benchmarks.torch_models` and `benchmarks.torch_baselines`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gans_jax.models.progan import channels_at, resolutions

TRAINER = "gans_jax.trainers.progan"
HE_GAIN = math.sqrt(2.0)


class EqualizedConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, gain: float = HE_GAIN):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin * kernel_size**2)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias,
                        padding=self.weight.shape[-1] // 2)


class EqualizedLinear(nn.Module):
    def __init__(self, cin: int, cout: int, gain: float = HE_GAIN):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x):
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def leaky(x):
    return F.leaky_relu(x, 0.2)


def upsample(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def lerp(old, new, alpha: float):
    return (1.0 - alpha) * old + alpha * new


def minibatch_stddev(x, group: int):
    b, c, h, w = x.shape
    g = min(group, b)
    std = torch.sqrt(x.reshape(b // g, g, c, h, w).var(dim=1, unbiased=False) + 1e-8)
    stat = std.mean(dim=(1, 2, 3)).repeat_interleave(g)[:, None, None, None]
    return torch.cat([x, stat.expand(b, 1, h, w)], dim=1)


class Generator(nn.Module):
    """z [B, z_dim] -> images [B, C, R, R] at the final resolution R, fade blend included."""

    def __init__(self, image_size: int, channels: int, z_dim: int, fmap_base: int,
                 max_channels: int):
        super().__init__()
        self.sizes = resolutions(image_size)

        def nf(r):
            return channels_at(r, fmap_base, max_channels)

        self.nf4 = nf(4)
        self.dense4 = EqualizedLinear(z_dim, 16 * nf(4), gain=HE_GAIN / 4)
        self.up = nn.ModuleDict({str(r): EqualizedConv(nf(r // 2), nf(r))
                                 for r in self.sizes[1:]})
        self.conv = nn.ModuleDict({str(r): EqualizedConv(nf(r), nf(r)) for r in self.sizes})
        self.to_rgb = nn.ModuleDict({str(r): EqualizedConv(nf(r), channels, 1, gain=1.0)
                                     for r in self.sizes})

    def forward(self, z, alpha: float = 1.0):
        h = pixel_norm(leaky(self.dense4(pixel_norm(z)).view(-1, self.nf4, 4, 4)))
        h = previous = pixel_norm(leaky(self.conv["4"](h)))
        for r in self.sizes[1:]:
            previous = h
            h = pixel_norm(leaky(self.up[str(r)](upsample(h))))
            h = pixel_norm(leaky(self.conv[str(r)](h)))
        final = self.sizes[-1]
        out = self.to_rgb[str(final)](h)
        if final == 4:
            return out
        return lerp(upsample(self.to_rgb[str(final // 2)](previous)), out, alpha)


class Discriminator(nn.Module):
    """images [B, C, R, R] at the final resolution -> scores [B], fade blend included."""

    def __init__(self, image_size: int, channels: int, fmap_base: int, max_channels: int,
                 mbstd_group: int):
        super().__init__()
        self.sizes, self.group = resolutions(image_size), mbstd_group

        def nf(r):
            return channels_at(r, fmap_base, max_channels)

        self.from_rgb = nn.ModuleDict({str(r): EqualizedConv(channels, nf(r), 1)
                                       for r in self.sizes})
        self.conv = nn.ModuleDict({str(r): EqualizedConv(nf(r), nf(r)) for r in self.sizes[1:]})
        self.down = nn.ModuleDict({str(r): EqualizedConv(nf(r), nf(r // 2))
                                   for r in self.sizes[1:]})
        self.conv4 = EqualizedConv(nf(4) + 1, nf(4))
        self.dense4 = EqualizedLinear(16 * nf(4), nf(4))
        self.score = EqualizedLinear(nf(4), 1, gain=1.0)

    def block(self, r: int, h):
        h = leaky(self.down[str(r)](leaky(self.conv[str(r)](h))))
        return F.avg_pool2d(h, 2)

    def forward(self, x, alpha: float = 1.0):
        final = self.sizes[-1]
        h = leaky(self.from_rgb[str(final)](x))
        if final > 4:
            old = leaky(self.from_rgb[str(final // 2)](F.avg_pool2d(x, 2)))
            h = lerp(old, self.block(final, h), alpha)
            for r in reversed(self.sizes[1:-1]):
                h = self.block(r, h)
        h = leaky(self.conv4(minibatch_stddev(h, self.group)))
        return self.score(leaky(self.dense4(h.flatten(1))))[:, 0]


def from_config(config) -> dict[str, nn.Module]:
    """G and D at the config's final resolution, named as in the Flax state."""
    m = config.model
    return {"g": Generator(m.image_size, m.channels, m.z_dim, m.fmap_base, m.max_channels),
            "d": Discriminator(m.image_size, m.channels, m.fmap_base, m.max_channels,
                               m.mbstd_group)}


def unsupported(config) -> str | None:
    if config.model.get("dtype", "float32") != "float32":
        return f"model.dtype={config.model.dtype!r}: the PyTorch twins run float32 only"
    return None


def batch_size(config) -> int:
    """The final resolution's batch: the stage the benchmarks time."""
    return int(config.schedule.batch_sizes[-1])


def train_step(config, g, d, memory_format, alpha: float = 0.5) -> Callable[[], None]:
    """One ProGAN step at the final resolution on a fixed synthetic real batch."""
    m, o, loss = config.model, config.optimizer, config.loss
    batch, size = batch_size(config), m.image_size
    g_opt = torch.optim.Adam(g.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    d_opt = torch.optim.Adam(d.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    g_params = list(g.parameters())
    ema = [p.detach().clone() for p in g_params]
    real = (torch.rand(batch, m.channels, size, size) * 2 - 1).contiguous(
        memory_format=memory_format)
    if size > 4:  # the reals faded as the JAX step fades them
        real = lerp(upsample(F.avg_pool2d(real, 2)), real, alpha)
    step = [0]

    def run() -> None:
        fake = g(torch.randn(batch, m.z_dim), alpha)
        detached = fake.detach()
        d_opt.zero_grad(set_to_none=True)
        real_scores = d(real, alpha)
        weights = torch.rand(batch, 1, 1, 1)
        mixed = (weights * real + (1 - weights) * detached).requires_grad_(True)
        (grads,) = torch.autograd.grad(d(mixed, alpha).sum(), mixed, create_graph=True)
        norms = torch.sqrt(grads.square().flatten(1).sum(dim=1) + 1e-12)
        d_loss = (d(detached, alpha).mean() - real_scores.mean()
                  + loss.gradient_penalty * (norms - 1).square().mean()
                  + loss.drift * real_scores.square().mean())
        d_loss.backward()
        d_opt.step()
        g_opt.zero_grad(set_to_none=True)
        g_loss = -d(fake, alpha).mean()
        (fake_grad,) = torch.autograd.grad(g_loss, fake)  # D's weights get none
        fake.backward(fake_grad)
        g_opt.step()
        decay = min(config.ema_decay, (1.0 + step[0]) / (10.0 + step[0]))
        with torch.no_grad():
            torch._foreach_lerp_(ema, g_params, 1.0 - decay)
        step[0] += 1

    return run
