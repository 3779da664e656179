"""Reading raw image data: TFDS by name, MNIST-format idx folders, CIFAR python pickles, image
folders and archives.

`load_source` turns the ``data`` part of a config into an `ImageSource`: images held in memory
(idx files, CIFAR pickles, TFDS) or a sorted list of image files read lazily by the pipeline
(image folders, ``.tar.gz`` archives of them). Every problem the user can fix raises `UserError`
naming the fix.

A split of an image folder is one of its subfolders: ``train``/``test``/``validation`` (and
their aliases), or any other subfolder by name, such as the unpaired domains ``trainA``,
``trainB``, ``testA`` and ``testB`` of the CycleGAN data sets.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import difflib
import functools
import gzip
import hashlib
import logging
import math
import os
import pickle
import re
import shutil
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common_jax import cache
from common_jax.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
# Folder names that hold one split of a dataset (cifar10-jpg: train/<class>/..., test/<class>/...).
SPLIT_FOLDERS = {
    "train": ("train",),
    "test": ("test",),
    "validation": ("validation", "val", "valid"),
}
IDX_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
# train-images-idx3-ubyte.gz; some mirrors write "train-images.idx3-ubyte".
IDX_FILE = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$")
IDX_IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension
TFDS_CHUNK = 4096  # examples per batch while copying a TFDS split into memory
# The python versions of CIFAR (cifar-10-python / cifar-100-python): split -> pickle files.
CIFAR100_FILES = {"train": ("train",), "test": ("test",)}
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
LABEL_MODES = ("fine", "coarse")  # CIFAR-100's 100 classes or its 20 superclasses


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """Images in memory or as files, before any pipeline."""

    name: str  # for messages
    images: np.ndarray | None  # uint8 [N,H,W,C] when held in memory, else None
    paths: list[str] | None  # image file paths when read lazily from disk, else None
    labels: np.ndarray | None  # int32 [N] or None (unlabelled)
    class_names: list[str] | None

    @property
    def num_examples(self) -> int:
        if self.images is not None:
            return int(self.images.shape[0])
        return len(self.paths or ())


def load_source(data_cfg: Any, *, split: str = "train") -> ImageSource:
    """Reads the data the config names: ``data.path`` if it exists, else ``data.tfds_name``."""
    raw_path = str(data_cfg.get("path", "") or "")
    tfds_name = str(data_cfg.get("tfds_name", "") or "")
    labels_from_subfolders = bool(data_cfg.get("labels_from_subfolders", True))
    label_mode = str(data_cfg.get("label_mode", "fine") or "fine")
    path = Path(raw_path).expanduser() if raw_path else None

    if path is not None and path.exists():
        return _load_path(path, split=split, labels_from_subfolders=labels_from_subfolders,
                          label_mode=label_mode)
    if tfds_name:
        if path is not None:
            log.info("data folder '%s' not found; using TFDS dataset '%s'", path, tfds_name)
        return _load_tfds(tfds_name, split=split, label_mode=label_mode)
    raise UserError(
        f"data folder '{path or ''}' does not exist; set --config.data.path to a folder of "
        "images or idx files, or --config.data.tfds_name to a TFDS dataset"
    )


# ----------------------------------------------------------------------------- local paths


def _load_path(path: Path, *, split: str, labels_from_subfolders: bool,
               label_mode: str = "fine") -> ImageSource:
    """Dispatches on what is at `path`: an archive, an idx folder, a CIFAR python folder or an
    image folder."""
    shown = str(path)
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise UserError(
                f"'{path}' is a file but not a .tar/.tar.gz archive; set --config.data.path to "
                "a folder of images or idx files, or to an archive of an image folder"
            )
        path = _extract_archive(path)
    root = _skip_wrapper_folders(path)
    if _find_idx_files(root):
        return _load_idx_folder(root, split=split, shown=shown)
    cifar_kind = _cifar_python_kind(root)
    if cifar_kind is not None:
        return _load_cifar_python(root, kind=cifar_kind, split=split, label_mode=label_mode,
                                  shown=shown)
    split_root = _split_folder(root, split=split, shown=shown)
    _check_split_has_images(root, split_root, split=split, shown=shown)
    return _load_image_folder(
        split_root, shown=shown, split=split, labels_from_subfolders=labels_from_subfolders
    )


def _visible_entries(folder: Path) -> list[Path]:
    # Hidden files and macOS resource forks ("._x.jpg", "__MACOSX/") are never images.
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"
    )


def _skip_wrapper_folders(folder: Path) -> Path:
    """Descends through folders whose only entry is one folder (archives usually add one).

    A single class folder carries no label information, so treating it as a wrapper and the
    images as unlabelled loses nothing.
    """
    for _ in range(16):  # bounded: a symlink loop must not hang the loader
        entries = _visible_entries(folder)
        if len(entries) != 1 or not entries[0].is_dir():
            break
        folder = entries[0]
    return folder


def _split_folder(folder: Path, *, split: str, shown: str) -> Path:
    """The subfolder holding `split`: one named like it (any name, e.g. the domain "trainA"),
    else one of the split's aliases when the folder is laid out as train/, test/, ..."""
    subfolders = sorted(p.name for p in _visible_entries(folder) if p.is_dir())
    if split in subfolders:
        return _skip_wrapper_folders(folder / split)
    if split not in SPLIT_FOLDERS:
        return _domain_folder_fallback(folder, split=split, shown=shown, subfolders=subfolders)
    found = sorted(set(subfolders) & {n for aliases in SPLIT_FOLDERS.values() for n in aliases})
    if not found:
        log.info("'%s' has no split subfolders; using all of it for split '%s'", shown, split)
        return folder
    for name in SPLIT_FOLDERS[split]:
        if name in subfolders:
            return _skip_wrapper_folders(folder / name)
    raise UserError(
        f"'{shown}' has split folders {found} but none for split '{split}'; "
        f"set --config.data.split to one of {found} or add a '{split}' folder"
    )


def _domain_folder_fallback(folder: Path, *, split: str, shown: str,
                            subfolders: list[str]) -> Path:
    """The folder itself for a split name it has no subfolder for, when that is unambiguous: a
    flat folder of images, or the split's own folder (data.path pointing at ".../trainA")."""
    if not subfolders or folder.name == split:
        log.info("'%s' has no '%s' subfolder; using all of it for split '%s'", shown, split,
                 split)
        return folder
    raise UserError(
        f"'{shown}' has no '{split}' folder (its subfolders: {', '.join(subfolders)}); set the "
        f"split in the config (data.split, or data.a.split / data.b.split) to one of them or "
        f"add a '{split}' folder"
    )


def _has_images(folder: Path) -> bool:
    """Whether any image file lies below `folder` (stops at the first one)."""
    for _dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        if any(not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
               for f in filenames):
            return True
    return False


def _check_split_has_images(root: Path, split_root: Path, *, split: str, shown: str) -> None:
    """An empty split (domain) folder fails naming it and the splits that do exist."""
    if split_root == root or _has_images(split_root):
        return
    others = [p.name for p in _visible_entries(root) if p.is_dir() and p != split_root]
    hint = f"or set the split to one of {', '.join(others)}" if others else "or another path"
    raise UserError(
        f"the '{split}' folder of '{shown}' ({split_root.relative_to(root).as_posix()}) has no "
        f"images; add images to it {hint}"
    )


# ----------------------------------------------------------------------------- archives


def _archive_stem(name: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _cache_root() -> Path:
    return cache.root()


def sha256_of_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _archive_digest(path: str, size: int, mtime_ns: int) -> str:
    """The archive's content hash, read once per process for each (path, size, mtime): the
    train and evaluation splits of one archive would otherwise both read the whole file."""
    del size, mtime_ns  # only part of the cache key: a replaced file is hashed again
    return sha256_of_file(path)[:12]


def _extract_archive(archive: Path) -> Path:
    """Extracts `archive` once into the cache and returns the folder; later calls reuse it.

    The folder name hashes the archive's bytes: a replaced archive gets a fresh extraction,
    while a copy or a re-download of the same file (new path or mtime) reuses the old folder
    instead of filling the cache with duplicates. Reading the file to hash it costs far less
    than extracting it. Extracting into a temporary folder and renaming it makes a half-written
    folder (crash, Ctrl-C, two processes at once) impossible to mistake for a finished one.
    """
    stat = archive.stat()
    digest = _archive_digest(str(archive.resolve()), stat.st_size, stat.st_mtime_ns)
    target = _cache_root() / f"{_archive_stem(archive.name)}-{digest}"
    if target.is_dir():
        log.info("using '%s', extracted earlier from '%s'", target, archive)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    log.info("extracting '%s' into '%s' (once; reused by later runs)", archive, target)
    try:
        with tarfile.open(archive) as tar:
            _safe_extract(tar, tmp)
        os.rename(tmp, target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.is_dir():  # another process finished the same extraction first
            return target
        raise UserError(
            f"could not extract '{archive}': {_first_line(e)}; re-download the archive or set "
            "--config.data.path to an extracted folder"
        ) from e
    return target


def _safe_extract(tar: tarfile.TarFile, folder: Path) -> None:
    """Extracts `tar` into `folder`, refusing members that would land outside it."""
    if hasattr(tarfile, "data_filter"):
        # Refuses absolute paths, links out of the folder and device files.
        tar.extractall(folder, filter="data")
        return
    # Pythons before 3.10.12 / 3.11.4 have no filters: check the names ourselves.
    for member in tar.getmembers():
        if member.name.startswith("/") or ".." in Path(member.name).parts or member.issym():
            raise tarfile.TarError(f"refusing unsafe archive member '{member.name}'")
    tar.extractall(folder)


# ----------------------------------------------------------------------------- idx files


def _find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
    """{(prefix, kind): path} of the MNIST-format files directly in `folder`."""
    found = {}
    for p in sorted(folder.iterdir()):
        m = IDX_FILE.match(p.name)
        if m and p.is_file():
            found.setdefault((m.group(1), m.group(2)), p)
    return found


def _load_idx_folder(folder: Path, *, split: str, shown: str) -> ImageSource:
    if split not in IDX_SPLIT_PREFIX:
        raise UserError(
            f"'{shown}' holds MNIST-format idx files, which have only the splits 'train' and "
            f"'test', not '{split}'; set --config.data.split to 'train' or 'test'"
        )
    prefix = IDX_SPLIT_PREFIX[split]
    files = _find_idx_files(folder)
    if (prefix, "images") not in files:
        raise UserError(
            f"'{shown}' has no {prefix}-images-idx3-ubyte[.gz] for split '{split}'; add it or "
            "set --config.data.split to a split the folder has"
        )
    images = _read_idx(files[prefix, "images"], magic=IDX_IMAGES_MAGIC)[..., None]
    labels = None
    if (prefix, "labels") in files:
        labels = _read_idx(files[prefix, "labels"], magic=IDX_LABELS_MAGIC).astype(np.int32)
        if len(labels) != len(images):
            raise UserError(
                f"'{files[prefix, 'labels']}' has {len(labels)} labels for {len(images)} "
                "images; re-download the idx files"
            )
    else:
        log.warning("'%s' has no %s-labels file; the images are unlabelled", shown, prefix)
    class_names = None
    if labels is not None and labels.size:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageSource(
        name=f"{shown} ({split})", images=images, paths=None, labels=labels,
        class_names=class_names,
    )


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        return f.read()


def _read_idx(path: Path, *, magic: int) -> np.ndarray:
    """An idx array of unsigned bytes: big-endian magic, then one uint32 per dimension."""
    try:
        data = _read_bytes(path)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"could not read '{path}': {_first_line(e)}; re-download it") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header or struct.unpack(">I", data[:4])[0] != magic:
        raise UserError(
            f"'{path}' is not an idx file (expected magic number {magic}); re-download it"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise UserError(
            f"'{path}' has {len(data) - header} bytes of data for shape {dims}; it is "
            "truncated or corrupt, re-download it"
        )
    # Copy: frombuffer over bytes is read-only, and callers may expect a normal array.
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


# ----------------------------------------------------------------------------- CIFAR pickles


def _cifar_python_kind(folder: Path) -> str | None:
    """"cifar100" or "cifar10" when `folder` holds that data set's python pickles, else None.

    The pickles are files, which tells them apart from an image folder's train/ and test/.
    """
    if (folder / "meta").is_file() and any((folder / n).is_file() for n in ("train", "test")):
        return "cifar100"
    if (folder / "batches.meta").is_file():
        return "cifar10"
    return None


# The only globals a CIFAR pickle refers to: NumPy's array reconstruction (the data) and the
# codecs call Python 3 uses to pickle bytes at protocol 2. Found from live objects, so the names
# of NumPy's private modules (numpy.core vs numpy._core) do not matter.
_SAFE_GLOBALS = {
    "_reconstruct": np.array(0).__reduce__()[0],
    "scalar": np.float64(0).__reduce__()[0],
    "ndarray": np.ndarray,
    "dtype": np.dtype,
    "encode": codecs.encode,
}
_SAFE_MODULES = ("numpy", "_codecs")


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only.

    Loading a pickle can run any code it names; the CIFAR files never need more than this, so a
    tampered file fails instead of running its code.
    """

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in _SAFE_MODULES and name in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[name]
        raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")


def _read_cifar_pickle(path: Path) -> dict[bytes, Any]:
    """A CIFAR pickle as a dict with bytes keys (as the Python 2 originals have)."""
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the official files were written by Python 2.
            loaded = _DataUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise UserError(
            f"could not read the CIFAR file '{path}': {_first_line(e)}; re-download the "
            "python version of the data set"
        ) from e
    if not isinstance(loaded, dict):
        raise UserError(f"'{path}' is not a CIFAR pickle (no dict inside); re-download it")
    return {k.encode() if isinstance(k, str) else k: v for k, v in loaded.items()}


def _cifar_images(batch: dict[bytes, Any], path: Path) -> np.ndarray:
    """b"data" rows (R plane, G plane, B plane; each row-major) -> uint8 [N, S, S, 3]."""
    data = np.asarray(batch.get(b"data", np.zeros((0, 0))))
    side = math.isqrt(data.shape[1] // 3) if data.ndim == 2 else 0
    if data.ndim != 2 or side == 0 or data.shape[1] != 3 * side * side:
        raise UserError(
            f"'{path}' has no b\"data\" array of shape [N, 3*S*S] (found {data.shape}); "
            "re-download the python version of the data set"
        )
    planes = data.astype(np.uint8, copy=False).reshape(-1, 3, side, side)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _load_cifar_python(folder: Path, *, kind: str, split: str, label_mode: str,
                       shown: str) -> ImageSource:
    """CIFAR-10 or CIFAR-100 from the official python pickles (``cifar-*-python``)."""
    files = CIFAR100_FILES if kind == "cifar100" else CIFAR10_FILES
    if split not in files:
        raise UserError(
            f"'{shown}' holds {kind} pickles, which have only the splits 'train' and 'test', "
            f"not '{split}'; set --config.data.split to 'train' or 'test'"
        )
    if label_mode not in LABEL_MODES or (kind == "cifar10" and label_mode != "fine"):
        allowed = LABEL_MODES if kind == "cifar100" else ("fine",)
        raise UserError(
            f"label_mode '{label_mode}' is not one of {kind}'s label sets; set "
            f"--config.data.label_mode to one of {', '.join(allowed)}"
        )
    label_key = b"labels" if kind == "cifar10" else f"{label_mode}_labels".encode()
    images, labels = [], []
    for name in files[split]:
        path = folder / name
        if not path.is_file():
            raise UserError(f"'{shown}' has no '{name}' file for split '{split}'; re-download "
                            f"the python version of {kind} or set --config.data.split")
        batch = _read_cifar_pickle(path)
        images.append(_cifar_images(batch, path))
        batch_labels = np.asarray(batch.get(label_key, ()), np.int64)
        if batch_labels.shape != (len(images[-1]),):
            raise UserError(
                f"'{path}' has {batch_labels.size} {label_key.decode()} for "
                f"{len(images[-1])} images; re-download the python version of {kind}"
            )
        labels.append(batch_labels.astype(np.int32))
    return ImageSource(
        name=f"{shown} ({split})", images=np.concatenate(images), paths=None,
        labels=np.concatenate(labels), class_names=_cifar_class_names(folder, kind, label_mode),
    )


def _cifar_class_names(folder: Path, kind: str, label_mode: str) -> list[str] | None:
    meta_path = folder / ("meta" if kind == "cifar100" else "batches.meta")
    key = b"label_names" if kind == "cifar10" else f"{label_mode}_label_names".encode()
    names = _read_cifar_pickle(meta_path).get(key)
    if not names:
        log.warning("'%s' has no %s; classes are numbered instead", meta_path, key.decode())
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


# ----------------------------------------------------------------------------- image folders


def _list_images(folder: Path) -> list[Path]:
    """Image files below `folder`, sorted by path so the order never depends on the disk."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        found.extend(
            Path(dirpath, f) for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _channel_kind(mode: str) -> str:
    if mode in ("1", "L", "I", "F") or mode.startswith("I;"):
        return "gray"
    if mode in ("LA", "La"):
        return "gray+alpha"
    if mode in ("RGBA", "RGBa", "PA"):
        return "RGBA"
    return "RGB"  # RGB, palette, YCbCr, CMYK: decoded to 3 channels


def _probe_image(path: Path) -> tuple[tuple[int, int], str] | str:
    """((width, height), channel kind) of a readable image, else the error message.

    Decoding the whole file is what catches truncated files (`verify()` does not). Draft mode
    lets JPEG decode at 1/8 scale, which still reads every byte but costs a fraction.
    """
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            im.draft(None, (1, 1))
            im.load()
        return size, _channel_kind(mode)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{type(e).__name__}: {_first_line(e)}"


def _load_image_folder(
    folder: Path, *, shown: str, split: str, labels_from_subfolders: bool
) -> ImageSource:
    files = _list_images(folder)
    if not files:
        patterns = ", ".join(f"*{ext}" for ext in IMAGE_EXTENSIONS)
        raise UserError(
            f"no images found in '{shown}' (looked for {patterns}); set --config.data.path to "
            "a folder of images or idx files"
        )
    readable, sizes, kinds, failures = [], collections.Counter(), collections.Counter(), []
    for path in files:
        probe = _probe_image(path)
        if isinstance(probe, str):
            failures.append((path, probe))
            continue
        readable.append(path)
        sizes[probe[0]] += 1
        kinds[probe[1]] += 1
    _report_problems(shown, total=len(files), failures=failures, sizes=sizes, kinds=kinds)

    labels, class_names = None, None
    relative = [p.relative_to(folder).parts for p in readable]
    if labels_from_subfolders and all(len(parts) > 1 for parts in relative):
        class_names = sorted({parts[0] for parts in relative})
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.array([index[parts[0]] for parts in relative], np.int32)
    return ImageSource(
        name=f"{shown} ({split})", images=None, paths=[str(p) for p in readable],
        labels=labels, class_names=class_names,
    )


def _report_problems(shown, *, total, failures, sizes, kinds) -> None:
    """Fails when nothing is readable; warns about skipped files and mixed sizes/channels."""
    if failures:
        example, reason = failures[0]
        if len(failures) == total:
            raise UserError(
                f"no readable images in '{shown}' ({len(failures)} files could not be read, "
                f"e.g. '{example}': {reason}); replace the files or set --config.data.path "
                "to another folder"
            )
        log.warning(
            "skipping %d of %d image files in '%s' that could not be read, e.g. '%s': %s",
            len(failures), total, shown, example, reason,
        )
    if len(sizes) > 1:
        common = ", ".join(f"{w}x{h}" for (w, h), _ in sizes.most_common(3))
        log.warning(
            "images in '%s' have %d different sizes (most common: %s); they are resized to "
            "the configured image size", shown, len(sizes), common,
        )
    if len(kinds) > 1:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        log.warning(
            "images in '%s' have mixed channels (%s); they are converted to the configured "
            "channel count", shown, counts,
        )


# ----------------------------------------------------------------------------- TFDS


def _load_tfds(name: str, *, split: str, label_mode: str = "fine") -> ImageSource:
    """Copies one TFDS split into memory (images uint8 [N,H,W,C], labels int32 if present).

    ``label_mode="coarse"`` reads the "coarse_label" feature (CIFAR-100's 20 superclasses)
    instead of "label".
    """
    import tensorflow_datasets as tfds  # slow import; only TFDS users pay for it

    builder = _tfds_builder(tfds, name)
    label_key = "label" if label_mode == "fine" else f"{label_mode}_label"
    features = getattr(builder.info, "features", None) or {}
    if label_mode != "fine" and label_key not in features:
        raise UserError(f"TFDS '{name}' has no '{label_key}' feature for label_mode "
                        f"'{label_mode}'; set --config.data.label_mode to fine")
    try:
        ds = tfds.load(name, split=split, as_supervised=False)
        images, labels = _collect_tfds(tfds, ds, what=f"TFDS '{name}' split '{split}'",
                                       label_key=label_key)
    except UserError:
        raise
    except Exception as e:  # downloads and TFDS fail in many ways
        raise UserError(
            f"loading TFDS '{name}' failed: {_first_line(e)}; download it on a machine with "
            f"internet (`tfds build {name}`) or set --config.data.path to local files"
        ) from e
    label_feature = builder.info.features[label_key] if labels is not None else None
    class_names = list(getattr(label_feature, "names", None) or []) or None
    return ImageSource(
        name=f"tfds:{name} ({split})", images=images, paths=None, labels=labels,
        class_names=class_names,
    )


def _tfds_builder(tfds: Any, name: str) -> Any:
    """The builder for `name`; an unknown name fails with the closest known names."""
    try:
        return tfds.builder(name)
    except tfds.core.registered.DatasetNotFoundError as e:
        # Only now pay for listing every builder (seconds): it is just for the message.
        base = re.split(r"[:/]", name)[0]
        close = difflib.get_close_matches(base, tfds.list_builders(), n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UserError(
            f"unknown TFDS dataset '{name}'; {hint}set --config.data.tfds_name to a TFDS "
            "name, or --config.data.path for a local folder"
        ) from e
    except Exception as e:  # e.g. a bad config or version suffix
        raise UserError(
            f"loading TFDS '{name}' failed: {_first_line(e)}; check --config.data.tfds_name "
            "or set --config.data.path to local files"
        ) from e


def _collect_tfds(tfds: Any, ds: Any, *, what: str,
                  label_key: str = "label") -> tuple[np.ndarray, np.ndarray | None]:
    """Stacks a TFDS split into arrays.

    Chunked batches instead of ``batch_size=-1``: that batches by the recorded split size and
    aborts the whole process (std::length_error) when the size is unknown, as under
    ``tfds.testing.mock_data``.
    """
    if "image" not in ds.element_spec:
        raise UserError(
            f"{what} has no 'image' feature (it has {sorted(ds.element_spec)}); "
            "set --config.data.tfds_name to an image dataset"
        )
    keys = ["image"] + ([label_key] if label_key in ds.element_spec else [])
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(TFDS_CHUNK)
    chunks = list(tfds.as_numpy(ds))
    if not chunks:
        raise UserError(f"{what} is empty; set --config.data.split to another split")
    images = np.concatenate([c["image"] for c in chunks]).astype(np.uint8, copy=False)
    if images.ndim == 3:  # some datasets store gray images without a channel axis
        images = images[..., None]
    labels = None
    if label_key in keys:
        labels = np.concatenate([c[label_key] for c in chunks]).astype(np.int32)
    return images, labels


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
