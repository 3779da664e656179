"""Pretrained weights merged into a freshly initialised model, with a report of what happened.

Transfer learning starts from ``model.init(...)`` and replaces the arrays a pretrained file has:

    variables = model.init(key, images, train=False)
    variables, report = merge_pretrained(variables, "resnet50.npz", skip=("params/head/.*",))
    for line in describe(report):
        log.info(line)

Paths are the keys from the root of the tree joined with "/" (`common_jax.optim` uses the same
format), so a Flax ``variables`` dict gives "params/backbone/conv1/kernel" and
"batch_stats/backbone/bn1/mean"; merge the params tree alone and the "params/" prefix goes.
A pretrained source is a nested mapping, a flat mapping of such paths, or an .npz file whose
array names are the paths (`flatten` writes one: ``np.savez(f, **flatten(variables))``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from common_jax.errors import UserError
from common_jax.optim import path_str

LISTED = 8  # paths shown per group by `describe`
Rename = Callable[[str], str] | Mapping[str, str] | Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class MergeReport:
    """What `merge_pretrained` did, as sorted path tuples.

    loaded: model arrays replaced by the pretrained ones.
    missing: model arrays the source lacks (kept at their initial values).
    unexpected: source arrays with no place in the model (unused).
    skipped: paths a ``skip`` pattern selects, in the model or the source (model kept at init).
    """

    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def flatten(tree) -> dict[str, np.ndarray]:
    """{"a/b/kernel": array} for every array of a nested tree (flat mappings pass through)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(p): np.asarray(x) for p, x in leaves}


def load(source) -> dict[str, np.ndarray]:
    """A pretrained source (nested or flat mapping, or .npz path) as flat path -> array."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"pretrained weights file {path} does not exist; give the path of "
                            "an .npz file of arrays named by their 'a/b/kernel' paths")
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (ValueError, OSError) as e:
            raise UserError(f"cannot read {path} as .npz ({e}); give an .npz file of arrays "
                            "named by their 'a/b/kernel' paths") from None
    return flatten(source)


def _renamer(rename: Rename | None) -> Callable[[str], str]:
    if rename is None:
        return lambda path: path
    if callable(rename):
        return rename
    rules = [(re.compile(p), r) for p, r in
             (rename.items() if isinstance(rename, Mapping) else rename)]

    def apply(path: str) -> str:
        # Every rule in order, as successive `re.sub`s (e.g. {"^resnet/": "backbone/"}).
        for pattern, replacement in rules:
            path = pattern.sub(replacement, path)
        return path

    return apply


def _renamed(flat: dict[str, np.ndarray], rename: Rename | None) -> dict[str, np.ndarray]:
    fn, out, origin = _renamer(rename), {}, {}
    for name, value in flat.items():
        new = fn(name)
        if new in out:
            raise UserError(f"rename maps both '{origin[new]}' and '{name}' of the pretrained "
                            f"weights to '{new}'; make the rename rules tell them apart")
        out[new], origin[new] = value, name
    return out


def _mismatch(path: str, init, value) -> str | None:
    shape = tuple(np.shape(init))
    dtype = np.dtype(init.dtype if hasattr(init, "dtype") else np.asarray(init).dtype)
    if shape == value.shape and dtype == value.dtype:
        return None
    return f"'{path}': pretrained {value.shape} {value.dtype}, model {shape} {dtype}"


def _check_compatible(model: dict[str, Any], source: dict[str, np.ndarray]) -> None:
    problems = [m for path, init in model.items() if path in source
                for m in [_mismatch(path, init, source[path])] if m]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"pretrained weights do not fit the model at {problems[0]}{more}; "
                        "skip those paths (skip=(...,)) or fix rename; nothing was merged")


def merge_pretrained(params, pretrained, *, skip: Sequence[str] = (),
                     rename: Rename | None = None) -> tuple[Any, MergeReport]:
    """Replaces the arrays of a fresh tree with the pretrained ones of the same path.

    Pure: the inputs are not modified, and on an error nothing is returned half-merged.

    Args:
      params: a freshly initialised tree (``variables``, or its "params" / "batch_stats").
      pretrained: a nested mapping, a flat {"a/b/kernel": array} mapping or an .npz path.
      skip: regular expressions matched against whole paths (after renaming): those model
        arrays keep their initial values and those source arrays are ignored, e.g.
        ``("head/.*",)`` for a new classification head.
      rename: maps source paths to model paths: a function, or ``{pattern: replacement}``
        (or pairs) applied in order as `re.sub`, e.g. ``{"^encoder/": "backbone/"}``.

    Returns:
      ``(merged, report)``: a tree of the same structure as ``params`` (each array with the
      pretrained value, or the initial one) and a `MergeReport`.

    Raises:
      UserError: a non-skipped path whose shape or dtype differs (the first one named, with
        both shapes), a bad skip pattern, or two source arrays renamed to one path.
    """
    try:
        skips = [re.compile(p) for p in skip]
    except re.error as e:
        raise UserError(f"bad skip pattern ({e}); give regular expressions such as "
                        "'head/.*'") from None
    source = _renamed(load(pretrained), rename)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    model = {path_str(p): x for p, x in leaves}

    def skipped(path: str) -> bool:
        return any(s.fullmatch(path) for s in skips)

    used = {p for p in model if p in source and not skipped(p)}
    _check_compatible({p: x for p, x in model.items() if p in used}, source)  # tree order
    # New arrays of the same kind as the initial ones (device or host); inputs stay untouched.
    merged = [(jnp.asarray if isinstance(x, jax.Array) else np.array)(source[p])
              if p in used else x for p, x in model.items()]
    report = MergeReport(
        loaded=tuple(sorted(used)),
        missing=tuple(sorted(p for p in model if p not in source and not skipped(p))),
        unexpected=tuple(sorted(p for p in source if p not in model and not skipped(p))),
        skipped=tuple(sorted({p for p in [*model, *source] if skipped(p)})))
    return jax.tree_util.tree_unflatten(treedef, merged), report


def _listed(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:LISTED])
    return shown + (f", ... ({len(paths) - LISTED} more)" if len(paths) > LISTED else "")


def describe(report: MergeReport) -> list[str]:
    """Log lines for a `MergeReport`: counts, then the paths of each non-empty group."""
    lines = [f"pretrained: {len(report.loaded)} arrays loaded, {len(report.missing)} missing "
             f"(kept at init), {len(report.unexpected)} unexpected (unused), "
             f"{len(report.skipped)} skipped"]
    for name, paths in (("missing (kept at init)", report.missing),
                        ("unexpected (unused)", report.unexpected),
                        ("skipped", report.skipped)):
        if paths:
            lines.append(f"  {name}: {_listed(paths)}")
    return lines
