"""The machine's matrix-multiply peak: GFLOP/s of square float32 and bfloat16 matmuls, through
XLA (jax) and through PyTorch when it is installed.

    python -m benchmarks.peak                      # 2048² and 4096², float32 and bfloat16
    python -m benchmarks.peak --sizes 1024 --dtypes float32 --repeats 5
    python -m benchmarks.peak --tiny               # 256², seconds

A matmul of two n×n matrices is 2n³ floating-point operations. Each (size, dtype) pair is timed
in rounds that alternate between XLA and PyTorch, after one untimed warm-up (which includes
XLA's compilation); a round repeats the matmul for about `--round-seconds`. The record gives the
mean ± std over rounds and the best round, which is what "peak" means here. `train_step` measures
the float32 XLA figure again in its own run and reports achieved FLOP/s as a fraction of it.
Writes benchmarks/results/peak_<tag>.json.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks import common

DTYPES = ("float32", "bfloat16")
SIZES = (2048, 4096)


def xla_contestant(size: int, dtype: str) -> common.Contestant:
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0))
    a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(dtype) for k in keys)
    matmul = jax.jit(jnp.matmul)

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = matmul(a, b)
        out.block_until_ready()

    return common.Contestant("xla", run, images_per_step=1, info={"size": size, "dtype": dtype})


def torch_contestant(size: int, dtype: str) -> common.Contestant | None:
    torch = common.import_torch()
    if torch is None:
        return None
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(getattr(torch, dtype))
            for _ in range(2))
    out = torch.empty(size, size, dtype=a.dtype)

    def run(n: int) -> None:
        for _ in range(n):
            torch.mm(a, b, out=out)

    return common.Contestant("torch", run, images_per_step=1, info={"size": size, "dtype": dtype})


def gflops(c: common.Contestant) -> dict:
    """GFLOP/s of a timed matmul contestant: mean, std and best round."""
    size = c.info["size"]
    rates = [2 * size**3 / s / 1e9 for s in c.seconds]
    if not rates:
        return {"backend": c.name, **c.info, "error": c.error or "not timed"}
    return {"backend": c.name, **c.info, "steps_per_round": c.steps,
            "gflops": round(statistics.mean(rates), 1),
            "gflops_std": round(statistics.stdev(rates), 1) if len(rates) > 1 else 0.0,
            "gflops_best": round(max(rates), 1),
            "ms_per_matmul": round(1000 * statistics.mean(c.seconds), 3)}


def measure(size: int, dtype: str, *, backends=("xla", "torch"), repeats: int = 3,
            round_seconds: float = 0.5) -> list[dict]:
    """Rows of `gflops` for one size and dtype, XLA and PyTorch rounds alternating."""
    makers = {"xla": xla_contestant, "torch": torch_contestant}
    contestants = [c for c in (makers[b](size, dtype) for b in backends) if c is not None]
    for c in contestants:
        common.warm_up(c, warmup=1, steps=0, round_seconds=round_seconds, max_steps=200)
    common.alternate(contestants, repeats)
    return [gflops(c) for c in contestants]


def xla_float32_peak(size: int = 2048, repeats: int = 3, round_seconds: float = 0.5) -> dict:
    """The float32 XLA matmul figure other benchmarks compare their FLOP/s with."""
    return measure(size, "float32", backends=("xla",), repeats=repeats,
                   round_seconds=round_seconds)[0]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per backend")
    parser.add_argument("--round-seconds", type=float, default=0.5)
    parser.add_argument("--no-torch", action="store_true", help="XLA only")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes, args.repeats, args.round_seconds = [256], 2, 0.05
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    record = common.header("peak", args)
    torch_missing = common.import_torch() is None
    backends = ("xla",) if args.no_torch or torch_missing else ("xla", "torch")
    if torch_missing:
        record["torch"] = "skipped: torch not installed"
    rows = []
    for size in args.sizes:
        for dtype in args.dtypes:
            for row in measure(size, dtype, backends=backends, repeats=args.repeats,
                               round_seconds=args.round_seconds):
                rows.append(row)
                print(f"{row['backend']:5s} {dtype:8s} {size:5d}²  "
                      f"{row.get('gflops', float('nan')):8.1f} ± {row.get('gflops_std', 0):.1f} "
                      f"GFLOP/s (best {row.get('gflops_best', float('nan')):.1f})")
    record["results"] = rows
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
