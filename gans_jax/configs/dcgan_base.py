"""Settings shared by every DCGAN experiment (the paper's defaults); experiments override."""

import ml_collections

from common_jax.errors import UserError
from common_jax.population import population_config

VARIANTS = ("smoke",)


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "gans_jax.trainers.dcgan"  # the module whose train_and_evaluate runs it
    c.seed = 0  # everything random (init, data order, z) derives from it

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # idx folder, image folder or .tar.gz of one; "" -> tfds_name
    c.data.tfds_name = ""  # used when path is empty or missing
    c.data.split = "train"

    c.model = ml_collections.ConfigDict()
    c.model.image_size = 64
    c.model.channels = 3
    c.model.z_dim = 100  # the paper's 100-d uniform/normal noise
    c.model.g_width = 64  # ngf
    c.model.d_width = 64  # ndf
    # The paper's choices; each can be switched (gans_jax.layers, common_jax.activations).
    c.model.upsample = "transpose4"  # transpose3, nearest, bilinear, pixel_shuffle
    c.model.upsample_impl = "auto"  # "xla" or "subpixel": same function; auto picks the faster
    c.model.downsample = "strided"  # or avg_pool
    c.model.g_norm = "batch"  # batch, instance, pixel, layer, none
    c.model.d_norm = "batch"
    c.model.d_spectral_norm = False
    c.model.g_activation = "relu"  # any name in common_jax.activations.ACTIVATIONS
    c.model.d_activation = "leaky_relu"
    c.model.d_slope = 0.2  # LeakyReLU slope in D
    c.model.dtype = "float32"  # computation dtype of G and D ("bfloat16": params stay float32)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.g_lr = 2e-4  # the paper: Adam 2e-4, beta1 0.5
    c.optimizer.d_lr = 2e-4
    c.optimizer.b1 = 0.5
    c.optimizer.b2 = 0.999

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "non_saturating"  # or minimax, lsgan, wasserstein, hinge
    c.loss.real_label = 1.0  # one-sided label smoothing: e.g. 0.9 (BCE and LSGAN losses)
    c.loss.gradient_penalty = 0.0  # WGAN-GP weight (the paper: 10)
    c.loss.r1 = 0.0  # R1 gamma: adds gamma/2 * E||grad D(x)||^2 on real data
    c.loss.drift = 0.0  # ProGAN's drift weight on D(x)^2 (the paper: 0.001)
    c.n_critic = 1  # D updates per G update (WGAN-GP: 5)
    c.instance_noise = 0.0  # std of Gaussian noise on D's inputs (images are in [-1, 1])
    c.instance_noise_steps = 0  # anneal that std linearly to 0 over these steps (0: constant)

    c.batch_size = 128  # global, over all devices and processes (the paper used 128)
    c.num_steps = 10_000
    c.ema_decay = 0.999  # generator weight average used for samples
    c.parallel = "shard_map"  # or "pmap"

    c.log_every = 50  # TensorBoard scalars and the metrics file
    c.sample_every = 500  # fixed-z sample grid PNG
    c.num_samples = 64  # images in a grid
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.progress_bar = True
    c.allow_config_change = False  # resume a workdir whose checkpoint has another config
    c.metrics = metrics_config()
    # K DCGANs side by side in one compiled step, each with its own seed and values of
    # gans_jax.trainers.dcgan.POPULATION_KEYS (docs/populations.md); members = 0: off.
    c.population = population_config()
    return c


def metrics_config() -> ml_collections.ConfigDict:
    """Scores of the EMA generator's samples (gans_jax.evaluation); off unless a judge is named
    or Inception is switched on. Changing them never blocks resuming a run."""
    m = ml_collections.ConfigDict()
    # A classifiers_jax run directory (e.g. an MNIST classifier for an MNIST GAN; same image
    # size and channels): FID/KID on its penultimate features and mode coverage. "": none.
    m.judge_workdir = ""
    m.inception = False  # Inception FID/KID too (needs `make fid-weights`; slow on CPU)
    m.every = 0  # steps between scores during training; 0: only at the end (and `train.py eval`)
    m.num_samples = 10_000  # generated images scored at the end and by `train.py eval`
    m.periodic_num_samples = 2_000  # generated images scored every `every` steps
    m.reference_split = "test"  # real data compared with (up to num_samples); "": data.split
    m.resize = "tf1_bilinear"  # Inception: tf1_bilinear (the TF FID graph's), bilinear, nearest
    m.coverage_threshold = 0.01  # a class counts as covered with at least this share of samples
    m.class_reference = "judge"  # the data's class distribution: "judge" predictions or "labels"
    m.batch_size = 250  # images per generator/feature batch (G's batch norm uses its statistics)
    m.kid_subsets = 100  # KID: mean over this many random subsets ...
    m.kid_subset_size = 1000  # ... of this many samples of each set
    return m


def with_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """Applies a named variant to an experiment's config (only `smoke` so far).

    An unknown name is a UserError rather than a ValueError: ml_collections would wrap a
    ValueError in a traceback while train.py parses --config, where a UserError passes through
    to be printed as one line."""
    if variant == "smoke":
        return smoke(c)
    if variant:
        raise UserError(f"unknown config variant '{variant}'; DCGAN configs have: "
                        f"{', '.join(VARIANTS)}; put one after the ':' in --config "
                        "(e.g. dcgan_mnist.py:smoke) or leave the ':' out")
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any DCGAN config to a run of seconds (tests, quick checks)."""
    c.model.g_width = 8
    c.model.d_width = 8
    c.batch_size = 16
    c.num_steps = 6
    c.log_every = 2
    c.sample_every = 3
    c.num_samples = 16
    c.checkpoint_every = 3
    c.progress_bar = False
    return c
