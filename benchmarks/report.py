"""Markdown tables from the newest benchmark records, ready to paste into the README.

    python -m benchmarks.report                      # benchmarks/results -> README_table.md
    python -m benchmarks.report --results DIR --out FILE

For each benchmark (peak, train_step, scaling, and torch_baselines / input_pipeline when they
were run alone) it takes the newest record in the results folder by its date, preferring full
runs to `--tiny` ones, and writes one table per benchmark with the machine, versions, commit and
date each record states. Figures are copied from the records, never re-measured.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from benchmarks import common

SCRIPTS = ("peak", "train_step", "scaling", "profile_step", "onednn_share", "conv_layers",
           "pooling", "torch_baselines", "input_pipeline", "allocator")


def latest(results: Path, script: str) -> tuple[Path, dict] | None:
    """The newest readable record of `script`: full runs before tiny ones, then runs of more
    models before runs of a few (`--only`), then by date."""
    found = []
    for path in results.glob(f"{script}_*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("benchmark") == script:
            found.append((not record.get("tiny", False), len(record.get("results") or ()),
                          record.get("date", ""), path, record))
    if not found:
        return None
    *_, path, record = max(found, key=lambda f: f[:3])
    return path, record


def _num(value, digits: int = 1) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _rate(entry: Any) -> str:
    """"mean ± std" images/s of a contestant entry, or why there is none."""
    if not isinstance(entry, dict):
        return "skipped" if entry else "–"
    if "images_per_s" not in entry:
        return "failed" if entry.get("error") else "–"
    return f"{_num(entry['images_per_s'])} ± {_num(entry.get('images_per_s_std'))}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def describe(path: Path, record: dict) -> str:
    v = record.get("versions", {})
    torch = f", torch {v['torch']}" if v.get("torch") else ", no torch"
    commit = str(record.get("commit", "unknown"))[:10]
    dirty = " (uncommitted changes)" if record.get("commit_dirty") else ""
    tiny = " **tiny run (smoke-size models): not representative**" if record.get("tiny") else ""
    return (f"_{record.get('date', '?')}, {record.get('cpu_model', '?')}, "
            f"{record.get('num_devices', '?')} {record.get('device_kind', '?')} device(s), "
            f"jax {v.get('jax')}, flax {v.get('flax')}{torch}, commit {commit}{dirty}; "
            f"record `{path.name}`._{tiny}")


def peak_section(record: dict) -> list[str]:
    rows = [[r["backend"], r["dtype"], f"{r['size']}²",
             f"{_num(r.get('gflops'))} ± {_num(r.get('gflops_std'))}",
             _num(r.get("gflops_best"))] for r in record.get("results", [])]
    out = _table(["backend", "dtype", "size", "GFLOP/s", "best round"], rows)
    if record.get("torch"):
        out.append(f"\nPyTorch: {record['torch']}.")
    return out


def train_step_section(record: dict) -> list[str]:
    from benchmarks.train_step import count_convolutions

    peak = record.get("xla_float32_peak", {})
    rows, notes = [], []
    for name, e in record.get("results", {}).items():
        e = count_convolutions(copy.deepcopy(e), peak.get("gflops_best"))  # older records too
        j = e.get("jax", {})
        fraction = j.get("fraction_of_f32_peak")
        flops = (f"{_num(j.get('achieved_gflops'))} ({100 * fraction:.0f}%)"
                 if fraction is not None else _num(j.get("achieved_gflops")))
        r = e.get("ratios", {})
        rows.append([f"`{name}`", _num(e.get("batch")), _rate(j), _num(j.get("ms_per_step")),
                     _num(j.get("compile_s")), _num(j.get("gflops_per_step"), 3), flops,
                     _rate(e.get("torch_eager")), _rate(e.get("torch_compile")),
                     _num(r.get("jax_over_torch_eager"), 2),
                     _num(r.get("jax_over_torch_compile"), 2)])
        for key in ("torch", "torch_compile"):
            if isinstance(e.get(key), str):
                notes.append(f"`{name}` {key.replace('_', '.')}: {e[key]}")
    head = ["model", "batch", "JAX images/s", "ms/step", "compile s", "GFLOP/step",
            "GFLOP/s (% of f32 peak)", "PyTorch eager images/s", "torch.compile images/s",
            "JAX / eager", "JAX / compile"]
    out = [f"Float32 XLA matmul peak in the same run: {_num(peak.get('gflops_best'))} GFLOP/s "
           f"({peak.get('size')}², best round).", ""] + _table(head, rows)
    if any((e.get("jax") or {}).get("onednn_custom_calls") for e in
           record.get("results", {}).values() if isinstance(e, dict)):
        out += ["", "GFLOP of a step whose convolutions are oneDNN custom calls are XLA's count "
                "for the same step with its own convolutions (the custom calls carry none)."]
    if any("input" in e for e in record.get("results", {}).values()):
        out += [""] + input_section(record)
    bf16 = [[f"`{n}`", _rate(e["jax_bfloat16"]), _num(e.get("ratios", {}).get(
        "jax_bfloat16_over_jax"), 2)] for n, e in record.get("results", {}).items()
        if isinstance(e.get("jax_bfloat16"), dict)]
    if bf16:
        out += ["", "The same JAX steps computing in bfloat16 (parameters float32), alternating "
                "with the rounds above:", ""]
        out += _table(["model", "JAX bfloat16 images/s", "bfloat16 / float32"], bf16)
    xla_conv = [[f"`{n}`", _num(e["jax"].get("onednn_custom_calls")), _rate(e["jax"]),
                 _rate(e["jax_xla_conv"]), _num(e.get("ratios", {}).get(
                     "jax_over_jax_xla_conv"), 2)]
                for n, e in record.get("results", {}).items()
                if isinstance(e.get("jax_xla_conv"), dict)]
    if xla_conv:
        out += ["", "The JAX steps above with oneDNN's convolutions (`common_jax.conv`) beside "
                "the same steps traced with XLA's, alternating in the same rounds:", ""]
        out += _table(["model", "oneDNN custom calls", "JAX images/s", "with XLA's "
                       "convolutions", "oneDNN / XLA"], xla_conv)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return out


def input_section(record: dict) -> list[str]:
    rows = []
    for name, e in record.get("results", {}).items():
        i = e.get("input")
        if i is None:
            continue
        if "skipped" in i:
            rows.append([f"`{name}`", i["skipped"], "", "", "", "", ""])
            continue
        bound = i.get("input_bound")
        source = str(i.get("source", "")).rsplit("/", 1)[-1]  # no machine-specific folders
        rows.append([f"`{name}`", f"{source} ({_num(i.get('source_load_s'))} s)",
                     _rate(i.get("input_pipeline")), _rate(e.get("jax")),
                     _rate(i.get("end_to_end")), _num(i.get("end_to_end_over_step"), 2),
                     "–" if bound is None else ("yes" if bound else "no")])
    head = ["model", "data (load time)", "input pipeline images/s", "step alone images/s",
            "end-to-end images/s", "end-to-end / step", "input-bound"]
    return ["Input pipeline (the trainer's tf.data iterator on the real data):", ""] + _table(
        head, rows)


def scaling_section(record: dict) -> list[str]:
    rows = []
    for name, e in record.get("results", {}).items():
        for r in e.get("rows", []):
            rows.append([f"`{name}`", _num(e.get("batch")), r["parallel"], str(r["devices"]),
                         _rate(r), _num(r.get("ms_per_step")), _num(r.get("speedup_vs_1"), 2),
                         _num(r.get("efficiency"), 2)])
    ideal = ("forced host CPU devices sharing the same cores: ideal speedup 1"
             if record.get("forced_host_devices") else "ideal speedup = number of devices")
    head = ["model", "global batch", "mode", "devices", "images/s", "ms/step", "speedup vs 1",
            "efficiency"]
    return [f"Same global batch on more devices ({ideal}).", ""] + _table(head, rows)


def torch_section(record: dict) -> list[str]:
    rows = []
    for name, e in record.get("results", {}).items():
        layout = (e.get("torch_eager") or {}).get("memory_format", "–") if isinstance(
            e.get("torch_eager"), dict) else "–"
        rows.append([f"`{name}`", _num(e.get("batch")), layout, _rate(e.get("torch_eager")),
                     _rate(e.get("torch_compile"))])
    return _table(["model", "batch", "layout", "eager images/s", "torch.compile images/s"], rows)


def pipeline_section(record: dict) -> list[str]:
    rows = [[f"`{n}`", _num(e.get("batch")), e.get("skipped") or _rate(e.get("input_pipeline"))]
            for n, e in record.get("results", {}).items()]
    return _table(["model", "batch", "input pipeline images/s"], rows)


def conv_layers_section(record: dict) -> list[str]:
    rows = []
    for row in record.get("layers", []):
        xla, torch = row["xla_ms"], row.get("torch_ms") or {}
        parts = ("forward", "grad_input", "grad_kernel")
        rows.append([row["layer"]["name"], _num(row["gflop"], 2)]
                    + [f"{_num(xla[p])} / {_num(torch.get(p))}" for p in parts])
    head = ["layer", "GFLOP (forward)", "forward ms XLA / PyTorch", "input grad ms",
            "kernel grad ms"]
    return ["Each part of a convolution alone (median ms; PyTorch eager, channels-last).", ""] + \
        _table(head, rows)


def profile_section(record: dict) -> list[str]:
    out = ["CPU time of the traced steps' XLA operations, by kind and the largest operations "
           "(`python -m benchmarks.profile_step`).", ""]
    for name, e in record.get("results", {}).items():
        if "by_kind" not in e:
            out += [f"- `{name}`: {e.get('skipped', 'no trace')}", ""]
            continue
        kinds = ", ".join(f"{k} {100 * v['share']:.0f}%" for k, v in e["by_kind"].items()
                          if v["share"] >= 0.005)
        out += [f"`{name}` (batch {e['batch']}, {e['devices']} device(s)): "
                f"{_num(e['wall_ms_per_step_traced'])} ms/step wall, "
                f"{_num(e['op_ms_per_step'])} ms/step of operations: {kinds}.", ""]
        rows = [[f"`{r['op']}`", r.get("shape", ""), "/".join(r.get("op_name", "").split("/")[-3:]),
                 _num(r["ms_per_step"]), f"{100 * r['share']:.1f}%"] for r in e["top_ops"]]
        out += _table(["operation", "output", "from", "ms/step", "share"], rows) + [""]
    return out[:-1]


def allocator_section(record: dict) -> list[str]:
    rows = []
    for work, e in record.get("results", {}).items():
        for name in ("glibc", "tcmalloc"):
            r = e.get(name)
            if not r:
                continue
            rate = (r.get("error") or f"{_num(r['images_per_s'])} ± {_num(r['images_per_s_std'])}")
            rows.append([f"`{work}`", name, rate, _num(r.get("sys_share", 0) * 100, 0) + "%",
                         _num(round(r.get("minor_faults", 0))),
                         _num(r.get("peak_rss_mb"), 0)])
        if "tcmalloc_speedup" in e:
            rows[-1][0] += f" (tcmalloc {e['tcmalloc_speedup']:.2f}×)"
    note = [f"- {record['skipped']}", ""] if record.get("skipped") else []
    return note + _table(["work", "allocator", "images/s", "system CPU", "page faults",
                         "peak memory MB"], rows)


def onednn_share_section(record: dict) -> list[str]:
    rows = []
    for name, e in record.get("results", {}).items():
        row = [f"`{name}`", _num(e.get("batch"))]
        for who in ("jax", "torch_eager"):
            r = e.get(who) or {}
            row += [_num(r.get("ms_per_step")), _num(r.get("onednn_ms")),
                    _num(r.get("outside_onednn_ms"))]
        rows.append(row + [_num(e.get("jax_speed_vs_torch"), 2)])
    head = ["model", "batch", "JAX ms/step", "in oneDNN", "outside", "PyTorch eager ms/step",
            "in oneDNN", "outside", "JAX / eager (speed)"]
    return ["One step split at oneDNN's primitives (`python -m benchmarks.onednn_share`; JAX on "
            "one CPU device, PyTorch eager channels_last, alternating; primitive times from "
            "oneDNN's verbose mode, mean of the verbose steps).", ""] + _table(head, rows)


def pooling_section(record: dict) -> list[str]:
    rows = []
    for shape, e in record.get("results", {}).items():
        for part in ("forward", "forward+backward"):
            rows.append([shape, part, _num(e.get(f"flax_max_pool {part}", {}).get("ms_per_step")),
                         _num(e.get(f"max_pool_2x2 {part}", {}).get("ms_per_step")),
                         _num(e.get(f"speedup {part}"), 2)])
    head = ["input", "part", "`nn.max_pool` ms", "`max_pool_2x2` ms", "speed-up"]
    return ["2x2 max pooling with stride 2, alternating rounds (`python -m "
            "benchmarks.pooling`).", ""] + _table(head, rows)


SECTIONS = {
    "peak": ("Matmul peak", peak_section),
    "train_step": ("Train step: JAX and PyTorch side by side", train_step_section),
    "scaling": ("Data-parallel scaling", scaling_section),
    "profile_step": ("Where the time goes: a profile of the step", profile_section),
    "onednn_share": ("Where the time goes: inside and outside oneDNN", onednn_share_section),
    "conv_layers": ("Where the time goes: convolutions alone", conv_layers_section),
    "pooling": ("Max pooling alone", pooling_section),
    "torch_baselines": ("PyTorch twins alone", torch_section),
    "input_pipeline": ("Input pipeline alone", pipeline_section),
    "allocator": ("The memory allocator: glibc malloc and tcmalloc", allocator_section),
}


def render(results: Path) -> str:
    lines = ["<!-- generated by `python -m benchmarks.report` from benchmarks/results -->", ""]
    for script in SCRIPTS:
        found = latest(results, script)
        if found is None:
            continue
        path, record = found
        title, section = SECTIONS[script]
        lines += [f"### {title}", "", describe(path, record), ""] + section(record) + [""]
    if len(lines) == 2:
        lines.append("No benchmark records yet: run `make bench`.")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(common.RESULTS), help="folder of JSON records")
    parser.add_argument("--out", default="",
                        help="Markdown file (default: RESULTS/README_table.md)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    out = Path(args.out) if args.out else results / "README_table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(results))
    print(f"table: {out}")
    return out


if __name__ == "__main__":
    main()
