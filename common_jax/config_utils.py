"""Small helpers for ml_collections configs: dotted overrides, the computation dtype, and the
start-up checks that turn a config mistake into one line naming the fix (`check_keys`,
`check_choices`, `check_counts`), run before any data is read or any device is made; and
`env_switch`, the same for an on/off environment variable."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections

from common_jax.errors import UserError

# Computation dtypes a model may run in; parameters and optimizer state stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Integer keys that must be at least 1 (besides every "*batch_size"): 0 would divide by zero
# (D updates per G update) or keep no checkpoint to resume from.
AT_LEAST_ONE = ("n_critic", "keep_checkpoints")
# Integer keys that may be negative: any integer seeds a random generator.
UNCHECKED_INTS = ("seed",)
# How a choice error names a key whose name alone does not read as a noun.
KEY_NAMES = {"parallel": "parallel mode"}
_MISSING = object()
# How an on/off environment variable may be spelt.
SWITCH_ON, SWITCH_OFF = ("1", "on", "true", "yes"), ("0", "off", "false", "no")
# A config section: a ConfigDict (frozen or not) or a plain dict.
Section = ml_collections.ConfigDict | Mapping[str, Any]


def env_switch(env: Mapping[str, str], name: str, *, default: str, fix: str) -> str:
    """Environment variable `name` read as "on" or "off"; `default` when it is unset or empty
    (a third word the caller handles, e.g. "auto", is accepted as itself). Any other value is a
    UserError ending in `fix`: a typo must not decide silently."""
    value = env.get(name, "").strip().lower()
    if value in ("", default):
        return default
    if value in SWITCH_ON:
        return "on"
    if value in SWITCH_OFF:
        return "off"
    raise UserError(f"{name}={env[name]!r} is not understood; {fix}")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Sets dotted keys in place, as ``--config.a.b=value`` would: {"model.width": 8}."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def compute_dtype(model_config: ml_collections.ConfigDict) -> Any:
    """The jnp dtype `model.dtype` names (float32 when unset), or a UserError naming the fix."""
    name = model_config.get("dtype", "float32")
    if name not in COMPUTE_DTYPES:
        raise UserError(f"unknown dtype '{name}'; set --config.model.dtype to one of "
                        f"{', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


# ----------------------------------------------------------------------------- start-up checks


def check_choices(config: Section, choices: Mapping[str, Sequence[str]]) -> None:
    """Refuses an enumerated option set to a value the code does not know.

    `choices` maps dotted keys to their valid values: a trainer module's ``CONFIG_CHOICES``.
    Keys the config lacks are skipped (the code's defaults apply to them). Raises a UserError
    such as "unknown loss.kind 'foo'; set --config.loss.kind to one of: minimax, ...".
    """
    for key, valid in choices.items():
        value = get_dotted(config, key)
        if value is not _MISSING and value not in valid:
            raise UserError(f"unknown {KEY_NAMES.get(key, key)} '{value}'; set --config.{key} "
                            f"to one of: {', '.join(valid)}")


def check_counts(config: Section) -> None:
    """Refuses negative integer settings (steps, `*_every`, sizes; 0 is allowed: for `*_every`
    it means never) and batch sizes below 1, naming every key to fix in one UserError."""
    problems = [problem for key, value in int_leaves(config)
                if (problem := count_problem(key, value))]
    if problems:
        raise UserError("; ".join(problems))


def count_problem(key: str, value: int) -> str | None:
    """What is wrong with integer setting `key` = `value` and how to fix it; None if nothing."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf in UNCHECKED_INTS:
        return None
    if leaf.endswith("batch_size") or leaf in AT_LEAST_ONE:
        if value < 1:
            return f"{key} must be at least 1, got {value}; set --config.{key} to 1 or more"
        return None
    if value < 0:
        never = " (0: never)" if leaf.endswith("_every") else ""
        return f"{key} must not be negative, got {value}; set --config.{key} to 0 or more{never}"
    return None


def check_keys(config: Section, keys: Sequence[str]) -> None:
    """Refuses the first dotted key the config does not have, suggesting close names."""
    for key in keys:
        if get_dotted(config, key) is _MISSING:
            raise UserError(unknown_key_message(config, key))


def unknown_key_message(config: Section, key: str) -> str:
    """Names the unknown key and the close keys the config has (by difflib), or, with nothing
    close, the keys of the deepest section on its path."""
    close = close_keys(key, [name for name, _ in leaves(config)])
    if close:
        fix = "did you mean " + " or ".join(f"--config.{name}" for name in close) + "?"
    else:
        section, names = nearest_section(config, key)
        fix = f"{f'section {section}' if section else 'the config'} has: {', '.join(names)}"
    return f"unknown config key '{key}' (--config.{key}); {fix}"


def close_keys(key: str, known: Sequence[str], limit: int = 3) -> list[str]:
    """Known dotted keys whose last part is close to `key`'s (difflib), those in the same section
    first. Comparing last parts finds a forgotten or wrong section ("upsample" ->
    "model.upsample"); whole keys would rank any key of the same section as close."""
    section, _, leaf = key.rpartition(".")

    def score(name: str) -> float:
        other_section, _, other_leaf = name.rpartition(".")
        same = 0.05 if other_section == section else 0.0
        return difflib.SequenceMatcher(None, leaf, other_leaf).ratio() + same

    scored = sorted(((score(name), name) for name in known), key=lambda s: -s[0])
    return [name for value, name in scored[:limit] if value >= 0.7]


def nearest_section(config: Section, key: str) -> tuple[str, list[str]]:
    """The deepest existing section on `key`'s path ("" for the top) and its keys."""
    node, path = config, []
    for name in key.split(".")[:-1]:
        child = node.get(name) if is_section(node) else None
        if not is_section(child):
            break
        node, path = child, [*path, name]
    return ".".join(path), list(node.keys())


def get_dotted(config: Section, key: str) -> Any:
    """The value at dotted `key`, or the module's _MISSING marker when any part is absent."""
    node: Any = config
    for name in key.split("."):
        if not is_section(node) or name not in node:
            return _MISSING
        node = node[name]
    return node


def int_leaves(config: Section) -> Iterator[tuple[str, int]]:
    """(dotted key, value) of every integer setting (booleans excluded)."""
    for key, value in leaves(config):
        if isinstance(value, int) and not isinstance(value, bool):
            yield key, value


def leaves(config: Section, prefix: str = "",
           sections: bool = False) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every setting, depth first; with `sections`, also each section."""
    for name, value in config.items():
        key = f"{prefix}{name}"
        if is_section(value):
            if sections:
                yield key, value
            yield from leaves(value, f"{key}.", sections)
        else:
            yield key, value


def is_section(value: Any) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, Mapping))
