"""Batch norm in training: flax's ``nn.BatchNorm`` against `common_jax.batch_norm.BatchNorm`.

    python -m benchmarks.batch_norm              # the models' batch-norm inputs, all devices
    python -m benchmarks.batch_norm --tiny       # small shapes, seconds

Each shape is timed as batch norm (batch statistics, averaged over the devices as in a
data-parallel train step) followed by a GELU, forward and backward (the gradients of a weighted
sum with respect to the input and the parameters), the global batch split over every local
device with ``shard_map``. The two implementations alternate in rounds within one process,
after one untimed call (which includes compilation). Writes
benchmarks/results/batch_norm_<tag>.json.
"""

from __future__ import annotations

from benchmarks import common

# Batch-norm inputs at the configs' global batch sizes: the CIFAR-10 fast network's (batch 512)
# and the 64x64 DCGAN generator's (batch 64).
SHAPES = {
    "cifar10_fast stem (512, 32, 32, 32)": (512, 32, 32, 32),
    "cifar10_fast block0 (512, 16, 16, 64)": (512, 16, 16, 64),
    "cifar10_fast block1 (512, 8, 8, 256)": (512, 8, 8, 256),
    "cifar10_fast block2 (512, 4, 4, 256)": (512, 4, 4, 256),
    "dcgan64 G (64, 8, 8, 256)": (64, 8, 8, 256),
    "dcgan64 G (64, 32, 32, 64)": (64, 32, 32, 64),
}
TINY_SHAPES = {"tiny (8, 4, 4, 8)": (8, 4, 4, 8)}
IMPLS = ("flax_batch_norm", "batch_norm")


def contestants(shape: tuple[int, ...]) -> list[common.Contestant]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from common_jax.batch_norm import BatchNorm

    devices = jax.local_devices()
    mesh = Mesh(np.array(devices), ("batch",))
    x = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), shape) * 2.0 + 0.5,
                       NamedSharding(mesh, P("batch")))
    weights = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), shape),
                             NamedSharding(mesh, P("batch")))
    out = []
    for name, cls in zip(IMPLS, (nn.BatchNorm, BatchNorm), strict=True):
        module = cls(use_running_average=False, momentum=0.9, epsilon=1e-5, axis_name="batch")
        params = cls(use_running_average=False).init(jax.random.PRNGKey(2), x[:1])

        def local(params, x, weights, module=module):
            def loss(params, x):
                y, updates = module.apply(params, x, mutable=["batch_stats"])
                return jnp.vdot(nn.gelu(y), weights), updates

            grads, updates = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)
            return jax.lax.psum(grads[0], "batch"), grads[1], updates

        step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("batch"), P("batch")),
                                     out_specs=(P(), P("batch"), P()), check_vma=False))

        def run(n: int, step=step, params=params) -> None:
            y = None
            for _ in range(n):
                y = step(params, x, weights)
            jax.block_until_ready(y)

        out.append(common.Contestant(name, run, images_per_step=shape[0],
                                     info={"impl": name, "devices": len(devices)}))
    return out


def main(argv=None) -> dict:
    args = common.operation_args(__doc__, argv, repeats=5)
    record = common.header("batch_norm", args)
    record["results"] = {}
    shapes = TINY_SHAPES if args.tiny else SHAPES
    for label, rows in common.time_per_shape(shapes, contestants, args):
        ms = [rows[impl].get("ms_per_step") for impl in IMPLS]
        if None not in ms:
            rows["speedup"] = round(ms[0] / ms[1], 2)
        print(f"{label:40s} flax {ms[0]} ms, batch_norm {ms[1]} ms")
        record["results"][label] = rows
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
