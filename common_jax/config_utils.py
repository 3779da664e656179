"""Small helpers for ml_collections configs."""

from __future__ import annotations

from typing import Any

import ml_collections


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
