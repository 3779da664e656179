"""PyTorch twins of the Flax models, for side-by-side speed baselines (`torch_baselines`).

Each twin has the same layers with the same shapes, hence the same parameter count, as its Flax
model at the same config (tests/test_benchmarks.py checks the counts):
- DCGAN `Generator` / `Discriminator` (gans_jax/models/dcgan.py) for the paper's choices:
  a bias-free linear projection to base×base maps, [transposed conv k4 s2 p1 -> batch norm ->
  ReLU] blocks, tanh; [conv k4 s2 p1 -> batch norm (not on the first layer) -> LeakyReLU(0.2)]
  blocks and a bias-free linear logit. Weights N(0, 0.02), batch-norm scale N(1, 0.02).
- `SNDCGANGenerator` / `SNDCGANDiscriminator`: the same module's "sngan_dcgan" architecture (the
  spectral normalisation paper's 32x32 CNN as PyTorch-StudioGAN's `deep_conv.py` builds it),
  with optional spectral norm on every D layer (`torch.nn.utils.parametrizations`, which keeps
  the weight's parameter count); biases where the Flax model has them.
- `BasicCNN`, `CNN` and `FastCIFARNet` (classifiers_jax/models/cnn.py).
- `ResNet50` (classifiers_jax/models/resnet.py), torchvision's network written out, in both
  layouts of the Flax model.
- CycleGAN `ResnetGenerator` / `PatchDiscriminator` (gans_jax/models/cyclegan.py), the
  reference's networks: reflection padding, affine-free instance norm (eps 1e-5), weights
  N(0, 0.02). As in the Flax model, a conv followed by a norm has no bias (the norm's mean
  subtraction cancels it), unlike the reference: 5,248 (G) and 896 (D) fewer parameters at
  ngf = ndf = 64, and the same operations up to those bias additions.
- `ConvAutoencoder` (autoencoders_jax/models/conv_ae.py) without normalisation, with
  transposed-conv (k4 s2 p1, bias-free) upsampling and either bottleneck.
Layouts differ where the frameworks differ (NCHW, weights [out, in, kh, kw]); that moves no
parameter and changes no operation count. `unsupported(config)` names any configured choice a
twin does not mirror (other up/downsampling, norms, spectral norm, losses, ...).

Not run on its own: imported by `benchmarks.torch_baselines`, which needs PyTorch installed.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks import torch_progan
from gans_jax.models.dcgan import geometry

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU,
               "silu": nn.SiLU, "swish": nn.SiLU, "logistic": nn.Sigmoid, "sigmoid": nn.Sigmoid,
               "softplus": nn.Softplus, "identity": nn.Identity}


def activation(name: str, slope: float = 0.2) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    if name not in ACTIVATIONS:
        raise ValueError(f"no PyTorch twin for activation '{name}'")
    return ACTIVATIONS[name]()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's initialisation, as the Flax models use it (biases, where a layer has
    one, start at zero as Flax's do)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- DCGAN


class Generator(nn.Module):
    """z [B, z_dim] -> images [B, channels, size, size] in [-1, 1]."""

    def __init__(self, image_size: int, channels: int, width: int = 64, z_dim: int = 100):
        super().__init__()
        base, n = geometry(image_size)
        features = width * 2 ** (n - 1)
        self.base, self.features = base, features
        self.memory_format = torch.contiguous_format
        # Flax's Dense "project"; equal to the paper's transposed conv on a 1x1 input.
        self.project = nn.Linear(z_dim, base * base * features, bias=False)
        self.project_bn = nn.BatchNorm2d(features)  # momentum 0.1, eps 1e-5 as in Flax
        layers: list[nn.Module] = []
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(features // 2), nn.ReLU(inplace=True)]
            features //= 2
        layers += [nn.ConvTranspose2d(features, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(-1, self.features, self.base, self.base)
        x = torch.relu(self.project_bn(x.contiguous(memory_format=self.memory_format)))
        return self.body(x)


class Discriminator(nn.Module):
    """images [B, channels, size, size] -> logits [B]."""

    def __init__(self, image_size: int, channels: int, width: int = 64, slope: float = 0.2):
        super().__init__()
        base, n = geometry(image_size)
        layers: list[nn.Module] = []
        cin = channels
        for i in range(n):
            cout = width * 2**i
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=False))
            if i > 0:  # the paper leaves the first layer unnormalised
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(slope, inplace=True))
            cin = cout
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.logit = nn.Linear(base * base * cin, 1, bias=False)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.body(x))[:, 0]


class SNDCGANGenerator(nn.Module):
    """z [B, z_dim] -> images [B, channels, size, size]: a dense layer with bias to
    base x base x (width * 2**n) maps, [transposed conv k4 s2 p1 -> batch norm -> act] x n,
    a 3x3 conv with bias, tanh."""

    def __init__(self, image_size: int, channels: int, width: int = 64, z_dim: int = 128,
                 act: str = "relu"):
        super().__init__()
        base, n = geometry(image_size)
        features = width * 2**n
        self.base, self.features = base, features
        self.memory_format = torch.contiguous_format
        self.project = nn.Linear(z_dim, base * base * features)
        layers: list[nn.Module] = []
        for _ in range(n):
            layers += [nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(features // 2), activation(act)]
            features //= 2
        layers += [nn.Conv2d(features, channels, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(-1, self.features, self.base, self.base)
        return self.body(x.contiguous(memory_format=self.memory_format))


class SNDCGANDiscriminator(nn.Module):
    """images [B, channels, size, size] -> logits [B]: [3x3 s1 conv -> norm -> act -> 4x4 s2
    conv -> norm -> act] x n (width, 2 width, ...), a 3x3 conv to width * 2**n -> norm -> act,
    the sum over H and W, a dense layer with bias. `norm` "batch" or "none" (then the convs
    have biases); `spectral_norm` on every conv and the dense layer."""

    def __init__(self, image_size: int, channels: int, width: int = 64, norm: str = "batch",
                 spectral_norm: bool = False, act: str = "relu", slope: float = 0.1):
        super().__init__()
        _, n = geometry(image_size)
        bias = norm == "none"

        def block(cin, cout, kernel, stride) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, stride, 1, bias=bias),
                    nn.BatchNorm2d(cout) if norm == "batch" else nn.Identity(),
                    activation(act, slope)]

        layers: list[nn.Module] = []
        cin = channels
        for i in range(n):
            cout = width * 2**i
            layers += block(cin, cout, 3, 1) + block(cout, cout, 4, 2)
            cin = cout
        layers += block(cin, width * 2**n, 3, 1)
        self.body = nn.Sequential(*layers)
        self.logit = nn.Linear(width * 2**n, 1)
        dcgan_init(self)  # before spectral norm re-expresses the weights
        if spectral_norm:
            for m in [*self.body, self.logit]:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.body(x).sum(dim=(2, 3)))[:, 0]


# ----------------------------------------------------------------------------- classifiers


def _pooled(size: int, times: int) -> int:
    for _ in range(times):
        size //= 2  # 2x2 max pool, stride 2, no padding (Flax's VALID)
    return size


class BasicCNN(nn.Module):
    """[conv k×k (SAME) -> 2x2 max pool -> act] x 2 (w, 2w) -> flatten -> [dense] -> dense."""

    def __init__(self, image_size: int, channels: int, num_classes: int = 10, width: int = 32,
                 kernel_size: int = 5, hidden: int = 0, act: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for features in (width, 2 * width):
            layers += [nn.Conv2d(cin, features, kernel_size, padding="same"), nn.MaxPool2d(2),
                       activation(act)]
            cin = features
        layers.append(nn.Flatten())
        flat = _pooled(image_size, 2) ** 2 * cin
        if hidden:
            layers += [nn.Linear(flat, hidden), activation(act)]
            flat = hidden
        layers.append(nn.Linear(flat, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """`depth` stages of [conv3x3 -> BN -> act] x k + max pool + dropout, GAP or flatten head."""

    def __init__(self, image_size: int, channels: int, num_classes: int = 10, width: int = 32,
                 depth: int = 2, convs_per_stage: int = 2, batch_norm: bool = True,
                 dropout: float = 0.0, act: str = "relu", head: str = "gap", hidden: int = 0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for stage in range(depth):
            features = width * 2**stage
            for _ in range(convs_per_stage):
                layers.append(nn.Conv2d(cin, features, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(features))
                layers.append(activation(act))
                cin = features
            layers += [nn.MaxPool2d(2), _dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.gap = head == "gap"
        flat = cin if self.gap else _pooled(image_size, depth) ** 2 * cin
        tail: list[nn.Module] = []
        if hidden:
            tail += [nn.Linear(flat, hidden), activation(act), _dropout(dropout)]
            flat = hidden
        self.tail = nn.Sequential(*tail, nn.Linear(flat, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        x = x.mean(dim=(2, 3)) if self.gap else torch.flatten(x, 1)
        return self.tail(x)


def _dropout(rate: float) -> nn.Module:
    return nn.Dropout(rate) if rate else nn.Identity()


class FastCIFARNet(nn.Module):
    """Stem, three [conv -> pool -> BN -> act -> conv -> BN -> act] blocks (w, 4w, 4w), global
    max pool, bias-free linear head scaled by `logit_scale`."""

    def __init__(self, channels: int = 3, num_classes: int = 10, width: int = 64,
                 stem_width: int = 0, act: str = "gelu", logit_scale: float = 0.125,
                 bn_momentum: float = 0.8):
        super().__init__()
        momentum = 1.0 - bn_momentum  # Flax keeps `momentum` of the old average; PyTorch 1 - it

        def conv_bn_act(cin, cout, pool=False):
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            return [conv, *([nn.MaxPool2d(2)] if pool else []),
                    nn.BatchNorm2d(cout, momentum=momentum), activation(act)]

        stem = stem_width or max(width // 2, 1)
        layers = conv_bn_act(channels, stem)
        cin = stem
        for features in (width, 4 * width, 4 * width):
            layers += conv_bn_act(cin, features, pool=True) + conv_bn_act(features, features)
            cin = features
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.amax(self.body(x), dim=(2, 3))
        return self.head(x) * self.logit_scale


# ----------------------------------------------------------------------------- CycleGAN


# ----------------------------------------------------------------------------- ResNet50


class Bottleneck(nn.Module):
    """torchvision's bottleneck (1x1 -> 3x3 -> 1x1, batch norms, projection shortcut when the
    shape changes), in either layout of classifiers_jax/models/resnet.py: "torchvision" (no
    conv biases, eps 1e-5, stride on the 3x3 conv) or "keras" (biases, eps 1e-3, stride on
    the first 1x1 conv)."""

    def __init__(self, cin: int, width: int, stride: int, layout: str = "torchvision"):
        super().__init__()
        keras = layout == "keras"
        eps, s1, s2 = (1e-3, stride, 1) if keras else (1e-5, 1, stride)
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, s1, bias=keras)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, width, 3, s2, 1, bias=keras)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=keras)
        self.bn3 = nn.BatchNorm2d(cout, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=keras),
                                            nn.BatchNorm2d(cout, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """torchvision's resnet50 written out (module names, hence state-dict keys, as
    torchvision's: conv1, bn1, layer1.0.conv1, layer1.0.downsample.0, fc). 25,557,032
    parameters in the torchvision layout. `preprocess` ("caffe" / "torch" / None) applies the
    same input mapping from [-1, 1] as the Flax model."""

    def __init__(self, num_classes: int = 1000, layout: str = "torchvision",
                 preprocess: str | None = None):
        super().__init__()
        keras = layout == "keras"
        self.preprocess = preprocess
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=keras)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-3 if keras else 1e-5)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            layer = []
            for b in range(blocks):
                stride = 2 if b == 0 and i > 0 else 1
                layer.append(Bottleneck(cin, width, stride, layout))
                cin = 4 * width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(cin, num_classes)

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x + 1) * 127.5
        if self.preprocess == "caffe":
            mean = x.new_tensor((103.939, 116.779, 123.68)).view(1, 3, 1, 1)
            return pixels.flip(1) - mean
        if self.preprocess == "torch":
            mean = x.new_tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
            std = x.new_tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
            return (pixels / 255 - mean) / std
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 2048-d features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self._preprocess(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def instance_norm(kind: str, features: int) -> nn.Module:
    """gans_jax.models.cyclegan's norms: "instance" (no affine, as the reference),
    "instance_affine" or "none"."""
    if kind == "none":
        return nn.Identity()
    return nn.InstanceNorm2d(features, eps=1e-5, affine=kind == "instance_affine")


class BiasAfter(nn.Module):
    """A bias-free upsampling body plus a bias of `features` added after it (the Flax model's
    pixel-shuffle layer without a norm: its conv has 4 x features channels but the bias comes
    after the shuffle)."""

    def __init__(self, body: nn.Module, features: int):
        super().__init__()
        self.body = body
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.bias.view(1, -1, 1, 1)


def upsample(method: str, cin: int, cout: int, bias: bool) -> nn.Module:
    """x2 upsampling to `cout` channels, as gans_jax.models.cyclegan.UpsampleBias for each
    gans_jax.layers.UPSAMPLE method."""
    if method == "transpose3":  # the reference's layer
        return nn.ConvTranspose2d(cin, cout, 3, 2, padding=1, output_padding=1, bias=bias)
    if method == "transpose4":
        return nn.ConvTranspose2d(cin, cout, 4, 2, padding=1, bias=bias)
    if method in ("nearest", "bilinear"):
        return nn.Sequential(nn.Upsample(scale_factor=2, mode=method),
                             nn.Conv2d(cin, cout, 3, padding=1, bias=bias))
    if method == "pixel_shuffle":
        body = nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, padding=1, bias=False),
                             nn.PixelShuffle(2))
        return BiasAfter(body, cout) if bias else body
    raise ValueError(f"no PyTorch twin for upsampling '{method}'")


class ResnetBlock(nn.Module):
    """x + (pad, conv3, norm, ReLU, pad, conv3, norm)(x)."""

    def __init__(self, features: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3, bias=bias),
            instance_norm(norm, features), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3, bias=bias),
            instance_norm(norm, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """images [B, C, S, S] -> [B, C, S, S] in [-1, 1]: c7s1-w, d2w, d4w, n x R4w, u2w, uw,
    c7s1-C, tanh."""

    def __init__(self, channels: int = 3, width: int = 64, num_blocks: int = 9,
                 upsample_method: str = "transpose3", norm: str = "instance"):
        super().__init__()
        w, bias = width, norm == "none"  # a norm after a conv cancels its bias
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7, bias=bias),
                                   instance_norm(norm, w), nn.ReLU(inplace=True)]
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w)):
            layers += [nn.Conv2d(cin, cout, 3, 2, padding=1, bias=bias),
                       instance_norm(norm, cout), nn.ReLU(inplace=True)]
        layers += [ResnetBlock(4 * w, norm) for _ in range(num_blocks)]
        for cin, cout in ((4 * w, 2 * w), (2 * w, w)):
            layers += [upsample(upsample_method, cin, cout, bias), instance_norm(norm, cout),
                       nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        cyclegan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PatchDiscriminator(nn.Module):
    """images [B, C, S, S] -> logits [B, 1, S/2^L - 2, S/2^L - 2]: the 70x70 PatchGAN for
    L = 3 (C64 without norm, C128, C256 stride 2, C512 stride 1, 1-channel conv; k4 p1)."""

    def __init__(self, channels: int = 3, width: int = 64, num_layers: int = 3,
                 norm: str = "instance", slope: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, padding=1),
                                   nn.LeakyReLU(slope, inplace=True)]
        cin = width
        for n in range(1, num_layers + 1):
            cout = width * min(2**n, 8)
            stride = 1 if n == num_layers else 2
            layers += [nn.Conv2d(cin, cout, 4, stride, padding=1, bias=norm == "none"),
                       instance_norm(norm, cout), nn.LeakyReLU(slope, inplace=True)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, 1, padding=1))
        self.body = nn.Sequential(*layers)
        cyclegan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def cyclegan_init(module: nn.Module) -> None:
    """The reference's initialisation: conv weights N(0, 0.02), biases zero."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- autoencoder


class ConvAutoencoder(nn.Module):
    """The Flax ConvAutoencoder with norm "none" and upsample "transpose4": a 3x3 conv, then per
    stage a strided 4x4 conv and (convs_per_stage - 1) 3x3 convs; a dense ("vector") or 1x1
    ("map") bottleneck and back; per stage (reversed) 3x3 convs then a bias-free transposed
    conv; a 3x3 conv to the pixels and tanh."""

    def __init__(self, image_size: int, channels: int, widths, latent_kind: str,
                 latent_size: int, convs_per_stage: int, act: str):
        super().__init__()
        side = image_size // 2 ** len(widths)
        top = widths[-1]
        enc = [nn.Conv2d(channels, widths[0], 3, 1, 1), activation(act)]
        cin = widths[0]
        for w in widths:
            enc += [nn.Conv2d(cin, w, 4, 2, 1), activation(act)]
            for _ in range(convs_per_stage - 1):
                enc += [nn.Conv2d(w, w, 3, 1, 1), activation(act)]
            cin = w
        if latent_kind == "vector":
            enc += [nn.Flatten(), nn.Linear(side * side * top, latent_size)]
            dec = [nn.Linear(latent_size, side * side * top), nn.Unflatten(1, (top, side, side))]
        else:
            enc += [nn.Conv2d(top, latent_size // (side * side), 1)]
            dec = [nn.Conv2d(latent_size // (side * side), top, 1)]
        dec += [activation(act)]
        cin = top
        for w in reversed(widths):
            for _ in range(convs_per_stage - 1):
                dec += [nn.Conv2d(cin, w, 3, 1, 1), activation(act)]
                cin = w
            dec += [nn.ConvTranspose2d(cin, w, 4, 2, 1, bias=False), activation(act)]
            cin = w
        dec += [nn.Conv2d(cin, channels, 3, 1, 1), nn.Tanh()]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# ----------------------------------------------------------------------------- from configs

CYCLEGAN_TRAINER = "gans_jax.trainers.cyclegan"
AUTOENCODER_TRAINER = "autoencoders_jax.trainers.autoencoder"

_DCGAN_DEFAULTS = {"upsample": "transpose4", "downsample": "strided", "g_norm": "batch",
                   "d_norm": "batch", "d_spectral_norm": False, "g_activation": "relu",
                   "d_activation": "leaky_relu"}
_GAN_LOSS_DEFAULTS = {"kind": "non_saturating", "gradient_penalty": 0.0, "r1": 0.0,
                      "drift": 0.0}


def unsupported(config) -> str | None:
    """Why a config has no PyTorch twin here, or None when it has one."""
    m = config.model
    if config.trainer == torch_progan.TRAINER:
        return torch_progan.unsupported(config)
    if config.trainer == CYCLEGAN_TRAINER:
        return cyclegan_unsupported(config)
    if config.trainer == AUTOENCODER_TRAINER:
        return autoencoder_unsupported(config)
    if config.trainer.startswith("gans_jax."):
        reason = dcgan_model_unsupported(m)
        if reason:
            return reason
        for key, value in _GAN_LOSS_DEFAULTS.items():
            if config.loss.get(key, value) != value:
                return f"loss.{key}={config.loss.get(key)!r} has no PyTorch twin"
        if config.get("n_critic", 1) != 1 or config.get("instance_noise", 0.0):
            return "n_critic > 1 and instance noise have no PyTorch twin"
        return None
    if m.arch not in ("basic", "cnn", "fast", "resnet50"):
        return f"model.arch={m.arch!r} has no PyTorch twin"
    if m.get("dtype", "float32") != "float32":
        return f"model.dtype={m.dtype!r}: the PyTorch twins run float32 only"
    if m.activation not in ACTIVATIONS and m.activation != "leaky_relu":
        return f"model.activation={m.activation!r} has no PyTorch twin"
    return None


def dcgan_model_unsupported(m) -> str | None:
    """Why a DCGAN model section has no twin: the paper architecture takes only its own
    choices; "sngan_dcgan" takes transposed convs, batch norm in G, batch norm or none in D,
    spectral norm or not, and the activations `activation` knows."""
    architecture = m.get("architecture", "dcgan")
    if architecture == "dcgan":
        for key, value in _DCGAN_DEFAULTS.items():
            if m.get(key, value) != value:
                return f"model.{key}={m.get(key)!r} has no PyTorch twin (only {value!r})"
        return None
    if architecture != "sngan_dcgan":
        return f"model.architecture={architecture!r} has no PyTorch twin"
    if m.upsample != "transpose4" or m.g_norm != "batch" or m.d_norm not in ("batch", "none"):
        return ("the sngan_dcgan twin takes only model.upsample='transpose4', "
                "model.g_norm='batch' and model.d_norm 'batch' or 'none'")
    for key in ("g_activation", "d_activation"):
        if m[key] not in ACTIVATIONS and m[key] != "leaky_relu":
            return f"model.{key}={m[key]!r} has no PyTorch twin"
    return None


_CYCLEGAN_NORMS = ("instance", "instance_affine", "none")
_CYCLEGAN_UPSAMPLE = ("transpose3", "transpose4", "nearest", "bilinear", "pixel_shuffle")


def cyclegan_unsupported(config) -> str | None:
    """Why a CycleGAN config has no twin: other losses, optimizers or optimizer options."""
    m, o = config.model, config.optimizer
    for key in ("g_norm", "d_norm"):
        if m[key] not in _CYCLEGAN_NORMS:
            return f"model.{key}={m[key]!r} has no PyTorch twin"
    if m.upsample not in _CYCLEGAN_UPSAMPLE:
        return f"model.upsample={m.upsample!r} has no PyTorch twin"
    if config.loss.kind != "lsgan":
        return f"loss.kind={config.loss.kind!r} has no PyTorch twin (only 'lsgan')"
    if o.name != "adam" or o.get("weight_decay", 0.0):
        return "only Adam without weight decay has a PyTorch twin"
    if o.get("freeze") or o.get("lr_multipliers"):
        return "optimizer.freeze / lr_multipliers have no PyTorch twin"
    return None


def autoencoder_unsupported(config) -> str | None:
    """Why an autoencoder config has no twin: a norm, another upsampling, loss or optimizer."""
    m = config.model
    if m.norm != "none" or m.upsample != "transpose4":
        return "only model.norm='none' with model.upsample='transpose4' has a PyTorch twin"
    if m.activation not in ACTIVATIONS and m.activation != "leaky_relu":
        return f"model.activation={m.activation!r} has no PyTorch twin"
    if config.loss.kind != "mse" or config.loss.ssim_weight:
        return "only the MSE loss without an SSIM term has a PyTorch twin"
    if config.optimizer.name != "adam" or config.optimizer.weight_decay:
        return "only Adam without weight decay has a PyTorch twin"
    return None


def autoencoder_from_config(config) -> ConvAutoencoder:
    m = config.model
    return ConvAutoencoder(m.image_size, m.channels, tuple(m.widths), m.latent_kind,
                           m.latent_size, m.convs_per_stage, m.activation)


def cyclegan_from_config(config) -> dict[str, nn.Module]:
    """The four networks, named as in CycleGANState: g_ab, g_ba, d_a, d_b."""
    m = config.model

    def generator():
        return ResnetGenerator(m.channels, m.g_width, m.g_blocks, m.upsample, m.g_norm)

    def discriminator():
        return PatchDiscriminator(m.channels, m.d_width, m.d_layers, m.d_norm, m.d_slope)

    return {"g_ab": generator(), "g_ba": generator(), "d_a": discriminator(),
            "d_b": discriminator()}


def twins_from_config(config) -> dict[str, nn.Module]:
    """Every network of a config's twin, named as in its Flax state (g/d, net, or CycleGAN's
    four)."""
    if config.trainer == torch_progan.TRAINER:
        return torch_progan.from_config(config)
    if config.trainer == CYCLEGAN_TRAINER:
        return cyclegan_from_config(config)
    if config.trainer == AUTOENCODER_TRAINER:
        return {"net": autoencoder_from_config(config)}
    if config.trainer.startswith("gans_jax."):
        return dict(zip(("g", "d"), dcgan_from_config(config), strict=True))
    return {"net": classifier_from_config(config)}


def dcgan_from_config(config) -> tuple[nn.Module, nn.Module]:
    m = config.model
    if m.get("architecture", "dcgan") == "sngan_dcgan":
        return (SNDCGANGenerator(m.image_size, m.channels, width=m.g_width, z_dim=m.z_dim,
                                 act=m.g_activation),
                SNDCGANDiscriminator(m.image_size, m.channels, width=m.d_width, norm=m.d_norm,
                                     spectral_norm=m.d_spectral_norm, act=m.d_activation,
                                     slope=m.d_slope))
    g = Generator(m.image_size, m.channels, width=m.g_width, z_dim=m.z_dim)
    d = Discriminator(m.image_size, m.channels, width=m.d_width, slope=m.d_slope)
    return g, d


def classifier_from_config(config) -> nn.Module:
    m = config.model
    if m.arch == "resnet50":
        return ResNet50(m.num_classes, m.get("layout", "keras"), m.get("preprocess", "caffe"))
    common = {"channels": m.channels, "num_classes": m.num_classes, "width": m.width,
              "act": m.activation}
    if m.arch == "basic":
        return BasicCNN(m.image_size, kernel_size=m.kernel_size, hidden=m.hidden, **common)
    if m.arch == "fast":
        return FastCIFARNet(**common)
    return CNN(m.image_size, depth=m.depth, convs_per_stage=m.convs_per_stage,
               batch_norm=m.batch_norm, dropout=m.dropout, head=m.head, hidden=m.hidden,
               **common)
