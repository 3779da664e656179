"""Compares the latest checkpoints of two run directories leaf by leaf.

    python -m benchmarks.compare_runs RUN_A RUN_B

Prints, for every leaf of the saved state that differs, its path and largest absolute
difference, then a total: how many leaves are bitwise equal. Used to check that a change of
the code left a run's arithmetic alone (the same config trained before and after it). The
arrays are read onto one device whatever the device layout they were saved from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def latest_state(workdir: str | Path) -> tuple[int, dict]:
    """(step, state tree as saved) of the newest checkpoint in `workdir`."""
    directory = Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
    if not steps:
        raise SystemExit(f"error: no checkpoint in {directory}")
    path = directory / str(max(steps)) / "state"
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path)
        metadata = getattr(metadata, "item_metadata", metadata)
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        return max(steps), checkpointer.restore(path, target)


def compare(a: dict, b: dict) -> tuple[int, int, list[str]]:
    """(bitwise equal leaves, leaves, lines describing the differences)."""
    leaves_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
    leaves_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    lines = [f"{jax.tree_util.keystr(k)}: only in one run"
             for k in set(leaves_a) ^ set(leaves_b)]
    equal = 0
    for key in leaves_a.keys() & leaves_b.keys():
        x, y = np.asarray(leaves_a[key]), np.asarray(leaves_b[key])
        if x.shape == y.shape and np.array_equal(x, y):
            equal += 1
        elif x.shape != y.shape:
            lines.append(f"{jax.tree_util.keystr(key)}: shapes {x.shape} and {y.shape}")
        else:
            diff = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
            lines.append(f"{jax.tree_util.keystr(key)}: max |difference| {diff:.3g}")
    return equal, len(leaves_a.keys() | leaves_b.keys()), sorted(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    args = parser.parse_args()
    step_a, a = latest_state(args.run_a)
    step_b, b = latest_state(args.run_b)
    equal, total, lines = compare(a, b)
    for line in lines:
        print(line)
    print(f"steps {step_a} and {step_b}: {equal} of {total} leaves bitwise equal")


if __name__ == "__main__":
    main()
