"""Reading raw image data: TFDS by name, MNIST-format idx folders, image folders and archives.

`load_source` turns the ``data`` part of a config into an `ImageSource`: images held in memory
(idx files, TFDS) or a sorted list of image files read lazily by the pipeline (image folders,
``.tar.gz`` archives of them). Every problem the user can fix raises `UserError` naming the fix.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import gzip
import hashlib
import logging
import os
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
    path = Path(raw_path).expanduser() if raw_path else None

    if path is not None and path.exists():
        return _load_path(path, split=split, labels_from_subfolders=labels_from_subfolders)
    if tfds_name:
        if path is not None:
            log.info("data folder '%s' not found; using TFDS dataset '%s'", path, tfds_name)
        return _load_tfds(tfds_name, split=split)
    raise UserError(
        f"data folder '{path or ''}' does not exist; set --config.data.path to a folder of "
        "images or idx files, or --config.data.tfds_name to a TFDS dataset"
    )


# ----------------------------------------------------------------------------- local paths


def _load_path(path: Path, *, split: str, labels_from_subfolders: bool) -> ImageSource:
    """Dispatches on what is at `path`: an archive, an idx folder or an image folder."""
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
    root = _split_folder(root, split=split, shown=shown)
    return _load_image_folder(
        root, shown=shown, split=split, labels_from_subfolders=labels_from_subfolders
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
    """The subfolder holding `split` when the folder is laid out as train/, test/, ..."""
    names = {p.name for p in _visible_entries(folder) if p.is_dir()}
    found = sorted(names & {n for aliases in SPLIT_FOLDERS.values() for n in aliases})
    if not found:
        log.info("'%s' has no split subfolders; using all of it for split '%s'", shown, split)
        return folder
    for name in SPLIT_FOLDERS.get(split, (split,)):
        if name in names:
            return _skip_wrapper_folders(folder / name)
    raise UserError(
        f"'{shown}' has split folders {found} but none for split '{split}'; "
        f"set --config.data.split to one of {found} or add a '{split}' folder"
    )


# ----------------------------------------------------------------------------- archives


def _archive_stem(name: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _cache_root() -> Path:
    return Path(os.environ.get("COMMON_JAX_CACHE") or "~/.cache/common_jax").expanduser()


def _extract_archive(archive: Path) -> Path:
    """Extracts `archive` once into the cache and returns the folder; later calls reuse it.

    The folder name hashes the archive's path, size and mtime, so a replaced archive gets a
    fresh extraction. Extracting into a temporary folder and renaming it makes a half-written
    folder (crash, Ctrl-C, two processes at once) impossible to mistake for a finished one.
    """
    stat = archive.stat()
    key = f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
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


def _load_tfds(name: str, *, split: str) -> ImageSource:
    """Copies one TFDS split into memory (images uint8 [N,H,W,C], labels int32 if present)."""
    import tensorflow_datasets as tfds  # slow import; only TFDS users pay for it

    builder = _tfds_builder(tfds, name)
    try:
        ds = tfds.load(name, split=split, as_supervised=False)
        images, labels = _collect_tfds(tfds, ds, what=f"TFDS '{name}' split '{split}'")
    except UserError:
        raise
    except Exception as e:  # downloads and TFDS fail in many ways
        raise UserError(
            f"loading TFDS '{name}' failed: {_first_line(e)}; download it on a machine with "
            f"internet (`tfds build {name}`) or set --config.data.path to local files"
        ) from e
    label_feature = builder.info.features["label"] if labels is not None else None
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


def _collect_tfds(tfds: Any, ds: Any, *, what: str) -> tuple[np.ndarray, np.ndarray | None]:
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
    keys = ["image"] + (["label"] if "label" in ds.element_spec else [])
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(TFDS_CHUNK)
    chunks = list(tfds.as_numpy(ds))
    if not chunks:
        raise UserError(f"{what} is empty; set --config.data.split to another split")
    images = np.concatenate([c["image"] for c in chunks]).astype(np.uint8, copy=False)
    if images.ndim == 3:  # some datasets store gray images without a channel axis
        images = images[..., None]
    labels = None
    if "label" in keys:
        labels = np.concatenate([c["label"] for c in chunks]).astype(np.int32)
    return images, labels


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
