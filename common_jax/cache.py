"""Where the project keeps what it derives once (extracted archives, converted weights,
features): $COMMON_JAX_CACHE, or ~/.cache/common_jax."""

import os
from pathlib import Path


def root() -> Path:
    return Path(os.environ.get("COMMON_JAX_CACHE") or "~/.cache/common_jax").expanduser()
