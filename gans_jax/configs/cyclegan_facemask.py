"""CycleGAN between masked (A) and unmasked (B) faces, 48x48 RGB: a face-mask remover (a2b)
that never sees a face both with and without its mask.

    python -m gans_jax.facemask build          # the domains, once (from the FER2013 archive)
    python train.py --config gans_jax/configs/cyclegan_facemask.py --workdir runs/facemask
    python -m gans_jax.facemask evaluate --workdir runs/facemask

The domains are the builder's folder ($COMMON_JAX_CACHE/facemask, ~/.cache/common_jax/facemask
by default): trainA (masked faces), trainB (unmasked), testA, testB. `data.a.path` and
`data.b.path` are one setting, the root of both domains: set either to move both.

Sized to train in about an hour on 2 CPU cores (see num_steps): ngf 32 and 6 residual blocks
(the paper's 6-block generator at half width), the 70x70 PatchGAN (at 48 pixels its 4x4 logits
each see nearly the whole face), batch 4.
Variants: `:smoke` runs a few steps in seconds.
"""

import ml_collections

from gans_jax import facemask
from gans_jax.configs import cyclegan_base


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = cyclegan_base.get_base_config()
    root = ml_collections.FieldReference(str(facemask.default_domains_dir()))
    c.data.a = cyclegan_base.domain(split="trainA", test_split="testA")  # masked faces
    c.data.b = cyclegan_base.domain(split="trainB", test_split="testB")  # unmasked faces
    c.data.a.path = c.data.b.path = root  # one root for both domains
    c.data.load_size = 54  # the reference's 286/256 jitter, scaled to 48 pixels
    c.model.image_size = 48
    c.model.g_width = 32
    c.model.g_blocks = 6
    # With XLA's CPU convolutions (no oneDNN extension) the default "transpose3" runs in its
    # sub-pixel form (model.upsample_impl="auto"): 8.5-9.5 image pairs/s at these settings,
    # against 6.4 for XLA's own transposed convolution, whose kernel gradient is slow there;
    # "nearest" resize + conv runs as fast as the sub-pixel form (2 CPU devices, batch 4).
    # With the extension "auto" is the direct form, the faster one there (docs/benchmarks.md).
    c.batch_size = 4
    c.num_steps = 8000
    c.log_every = 50
    c.sample_every = 500
    c.checkpoint_every = 1000
    return cyclegan_base.with_variant(c, variant)
