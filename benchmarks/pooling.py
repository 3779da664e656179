"""2x2 max pooling: flax's ``nn.max_pool`` against `common_jax.pooling.max_pool_2x2`, alone.

    python -m benchmarks.pooling                 # the classifiers' pooling shapes
    python -m benchmarks.pooling --tiny          # small shapes, seconds

Each shape is timed forward and forward + backward (the gradient of a weighted sum), the two
implementations alternating in rounds within one process, after one untimed call (which
includes compilation). Writes benchmarks/results/pooling_<tag>.json.
"""

from __future__ import annotations

from benchmarks import common

# The inputs of the classifiers' 2x2 poolings at their config batch sizes: the CIFAR-10 fast
# network's three (batch 512) and the MNIST CNN's first two (batch 128).
SHAPES = {
    "cifar10_fast block0 (512, 32, 32, 64)": (512, 32, 32, 64),
    "cifar10_fast block1 (512, 16, 16, 256)": (512, 16, 16, 256),
    "cifar10_fast block2 (512, 8, 8, 256)": (512, 8, 8, 256),
    "mnist stage0 (128, 28, 28, 32)": (128, 28, 28, 32),
    "mnist stage1 (128, 14, 14, 64)": (128, 14, 14, 64),
}
TINY_SHAPES = {"tiny (8, 8, 8, 4)": (8, 8, 8, 4)}


def contestants(shape: tuple[int, ...]) -> list[common.Contestant]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from common_jax.pooling import max_pool_2x2

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    pools = {"flax_max_pool": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)),
             "max_pool_2x2": max_pool_2x2}
    weights = jax.random.normal(jax.random.PRNGKey(1), pools["max_pool_2x2"](x).shape)
    out = []
    for name, pool in pools.items():
        forward = jax.jit(pool)
        backward = jax.jit(jax.grad(lambda x, pool=pool: jnp.vdot(pool(x), weights)))
        for part, fn in (("forward", forward), ("forward+backward", backward)):
            def run(n: int, fn=fn) -> None:
                y = None
                for _ in range(n):
                    y = fn(x)
                jax.block_until_ready(y)

            out.append(common.Contestant(f"{name} {part}", run, images_per_step=shape[0],
                                         info={"impl": name, "part": part}))
    return out


def main(argv=None) -> dict:
    args = common.operation_args(__doc__, argv)
    record = common.header("pooling", args)
    record["results"] = {}
    shapes = TINY_SHAPES if args.tiny else SHAPES
    for label, rows in common.time_per_shape(shapes, contestants, args):
        for part in ("forward", "forward+backward"):
            ms = [rows[f"{impl} {part}"].get("ms_per_step")
                  for impl in ("flax_max_pool", "max_pool_2x2")]
            if None not in ms:
                rows[f"speedup {part}"] = round(ms[0] / ms[1], 2)
            print(f"{label:42s} {part:17s} flax {ms[0]} ms, max_pool_2x2 {ms[1]} ms")
        record["results"][label] = rows
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
