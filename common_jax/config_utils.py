"""Small helpers for ml_collections configs."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from common_jax.errors import UserError

# Computation dtypes a model may run in; parameters and optimizer state stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
