"""Where a train step's time goes: a `jax.profiler` trace of a model's compiled step, summed per
XLA operation and per kind of operation.

    python -m benchmarks.profile_step --only dcgan_anime            # 64x64 DCGAN, 5 steps
    python -m benchmarks.profile_step --only cls_mnist --steps 20 --top 15
    python -m benchmarks.profile_step --tiny                        # smoke-size, seconds

The step is built as the training loop builds it (`benchmarks.train_step.JaxStep`), warmed up,
then run `--steps` times inside `jax.profiler.trace`. The trace (kept under
benchmarks/results/traces/<model>/, viewable in TensorBoard's profile plugin or Perfetto) holds
one event per executed XLA operation on the threads that run them. The summary adds the events'
durations per operation name, looks each name up in the optimized HLO of the same executable
(its opcode, output shape and the model code it came from, from the HLO metadata), and groups
the time by kind: convolution, dot, reduction (a fusion counts as the heaviest of these it
holds, since XLA's CPU back end runs them inside fusions; a oneDNN custom call is a
convolution), elementwise fusion, copy/transpose,
collective, waiting (a device's thread waiting for the others at a collective), other.

Operations of different devices run at the same time on different threads, so the summed
operation time is CPU time, not wall time; both are reported, per step. Writes
benchmarks/results/profile_step_<tag>.json.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import time
from pathlib import Path
from typing import Any

from benchmarks import common

# An HLO instruction line: "%name = f32[64,32,32,64]{3,2,1,0} opcode(...), ..., metadata={...}"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+?(?:\{[^}]*\})?)\s+([\w\-]+)\(")
# A computation's first line, at the start of a line: "%fused_computation.9 (p: f32[..]) -> .. {"
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_SOURCE = re.compile(r'source_file="([^"]*)"\s+source_line=(\d+)')

KINDS = {"convolution": "convolution", "dot": "dot", "copy": "copy/transpose",
         "transpose": "copy/transpose", "all-reduce": "collective", "all-gather": "collective",
         "reduce-scatter": "collective", "collective-permute": "collective",
         "reduce": "reduction"}
# A fusion counts as the heaviest kind of operation it contains (XLA's CPU back end runs its
# convolutions, matmuls and reductions inside fusions).
FUSION_KINDS = ("convolution", "dot", "reduce")
ONEDNN_PREFIX = "Onednn"  # custom-call targets of common_jax.onednn's convolutions


def hlo_instructions(hlo_text: str) -> dict[str, dict[str, str]]:
    """name -> {opcode, shape, op_name, source[, fusion_kind, contains]} for every instruction of
    an HLO module's text; a fusion says which heavy operation its computation holds."""
    out: dict[str, dict[str, str]] = {}
    members: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    computation = ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line) if not line[:1].isspace() else None
        if header:
            computation = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        info = {"opcode": opcode, "shape": re.sub(r"\{[^}]*\}", "", shape)}
        if op_name := _OP_NAME.search(line):
            info["op_name"] = op_name.group(1)
        if source := _SOURCE.search(line):
            info["source"] = f"{Path(source.group(1)).name}:{source.group(2)}"
        if target := _TARGET.search(line):
            info["target"] = target.group(1)
        if opcode == "fusion":
            if "kind=" in line:
                info["fusion_kind"] = line.split("kind=", 1)[1].split(",", 1)[0].split(" ", 1)[0]
            if calls := _CALLS.search(line):
                info["calls"] = calls.group(1)
        out[name] = info
        members[computation].append(info)
    for info in out.values():
        if "calls" not in info:
            continue
        inner = members.get(info.pop("calls"), [])
        heavy = [i for kind in FUSION_KINDS for i in inner if i["opcode"] == kind]
        if heavy:
            info["contains"] = heavy[0]["opcode"]
            if "op_name" not in info and "op_name" in heavy[0]:
                info["op_name"] = heavy[0]["op_name"]
    return out


def op_events(trace: dict | list) -> dict[str, float]:
    """Summed microseconds per operation name, over the events of XLA's worker threads."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    xla_threads = {(e.get("pid"), e.get("tid")) for e in events
                   if e.get("ph") == "M" and e.get("name") == "thread_name"
                   and str(e.get("args", {}).get("name", "")).startswith("tf_XLA")}
    totals: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or (e.get("pid"), e.get("tid")) not in xla_threads:
            continue
        name = str(e.get("name", ""))
        if name.startswith(("ThunkExecutor", "end: ")) or "::" in name:
            continue  # the runtime's own spans enclose the operations' spans
        totals[name] += float(e.get("dur", 0.0))
    return dict(totals)


def kind_of(name: str, info: dict[str, str] | None) -> str:
    if info:
        if info["opcode"] == "fusion":
            return KINDS[info["contains"]] if "contains" in info else "fusion (elementwise)"
        if info["opcode"] == "custom-call" and info.get("target", "").startswith(ONEDNN_PREFIX):
            return "convolution"  # a convolution computed by oneDNN (common_jax.conv)
        return KINDS.get(info["opcode"], "other")
    if name.startswith(("Rendezvous", "Wait")):
        return "waiting"  # a device thread waiting for the others at a collective
    return "other"


def summarize(op_us: dict[str, float], instructions: dict[str, dict[str, str]], steps: int,
              top: int) -> dict[str, Any]:
    """Per-step milliseconds per operation (the `top` largest) and per kind, with shares."""
    total = sum(op_us.values()) or 1.0
    by_kind: dict[str, float] = collections.defaultdict(float)
    rows = []
    for name, us in sorted(op_us.items(), key=lambda kv: -kv[1]):
        info = instructions.get(name)
        kind = kind_of(name, info)
        by_kind[kind] += us
        if len(rows) < top:
            rows.append({"op": name, "ms_per_step": round(us / steps / 1e3, 3),
                         "share": round(us / total, 4), "kind": kind, **(info or {})})
    return {"op_ms_per_step": round(total / steps / 1e3, 2),
            "by_kind": {k: {"ms_per_step": round(v / steps / 1e3, 2), "share": round(v / total, 4)}
                        for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_ops": rows, "ops_seen": len(op_us),
            "ops_matched_to_hlo": sum(1 for n in op_us if n in instructions)}


def profile_model(name: str, config, args, log=print) -> dict[str, Any]:
    """Trace `args.steps` steps of one model's train step and summarize the trace."""
    import jax

    from benchmarks.train_step import JaxStep

    step = JaxStep(config, devices=args.devices, mode=args.parallel)
    step.run(max(args.warmup, 1))
    trace_dir = Path(args.trace_dir) / name
    start = time.perf_counter()
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        step.run(args.steps)
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
    traces = sorted(trace_dir.glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        return {"skipped": f"the profiler wrote no Perfetto trace under {trace_dir}"}
    with gzip.open(traces[-1], "rt") as f:
        op_us = op_events(json.load(f))
    summary = summarize(op_us, hlo_instructions(step.compiled.as_text()), args.steps, args.top)
    summary.update({"wall_ms_per_step_traced": round(wall_ms, 2), "steps": args.steps,
                    "devices": step.dp.num_devices, "batch": config.batch_size,
                    "trace": str(traces[-1].relative_to(common.ROOT))
                    if traces[-1].is_relative_to(common.ROOT) else str(traces[-1])})
    log(f"  wall {wall_ms:.1f} ms/step traced; operations {summary['op_ms_per_step']} ms/step of"
        f" CPU time on {step.dp.num_devices} device(s)")
    for kind, v in summary["by_kind"].items():
        log(f"    {kind:15s} {v['ms_per_step']:9.2f} ms  {100 * v['share']:5.1f}%")
    for row in summary["top_ops"]:
        where = row.get("op_name", "").split("/")[-3:]
        log(f"    {row['ms_per_step']:9.2f} ms {100 * row['share']:5.1f}%  {row['op']:28s} "
            f"{row.get('shape', ''):24s} {'/'.join(where)}")
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser, default="dcgan_anime")
    parser.add_argument("--devices", type=int, default=0,
                        help="JAX devices for the step (0: as train.py, one per CPU core)")
    parser.add_argument("--parallel", choices=("shard_map", "pmap"), default="shard_map")
    parser.add_argument("--top", type=int, default=12, help="operations listed per model")
    parser.add_argument("--trace-dir", default=str(common.RESULTS / "traces"),
                        help="where the raw traces go (not committed)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    args.steps = args.steps or 5
    if args.tiny:
        args.steps, args.warmup = min(args.steps, 2), 1
    return args


def main(argv=None, *, reexec: bool = False) -> dict:
    args = parse_args(argv)
    common.choose_devices(args, reexec=reexec)
    record = common.header("profile_step", args)
    record["results"] = {}
    for name, spec, config in common.model_configs(args, default=["dcgan_anime"]):
        print(f"{name} ({spec}, batch {config.batch_size})")
        record["results"][name] = {"config": spec, **profile_model(name, config, args)}
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main(reexec=True)
