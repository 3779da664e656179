"""The benchmark scripts in their tiny settings: each runs and writes a JSON record with the
expected keys, and the report turns the records into Markdown. The PyTorch twins have the Flax
models' parameter counts. No timing is asserted: the figures depend on the machine."""

import importlib
import json
import os

import jax
import numpy as np
import pytest

from benchmarks import common, input_pipeline, peak, report, scaling, torch_baselines, train_step
from common_jax.conv import onednn_active

HEADER_KEYS = {"benchmark", "date", "commit", "versions", "backend", "device_kind", "num_devices",
               "cpu_model", "args", "tiny", "results"}
TIMED_KEYS = {"images_per_s", "images_per_s_std", "ms_per_step", "ms_per_step_std",
              "steps_per_round", "rounds"}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Runs peak, train_step and scaling once in their tiny settings; returns the folder."""
    out = tmp_path_factory.mktemp("bench")
    args = ["--tiny", "--out", str(out), "--tag", "test"]
    peak.main(args + ["--dtypes", "float32"])
    # torch.compile takes tens of seconds even for tiny networks: eager only here.
    train_step.main(args + ["--only", "dcgan_mnist", "--only", "cls_mnist_basic",
                            "--no-torch-compile", "--bfloat16", "--xla-conv"])
    scaling.main(args + ["--only", "cls_mnist_basic", "--devices", "1,2"])
    return out


def load(folder, script):
    record = json.loads((folder / f"{script}_test.json").read_text())
    assert HEADER_KEYS <= set(record), HEADER_KEYS - set(record)
    assert record["benchmark"] == script and record["tiny"] is True
    assert {"jax", "jaxlib", "flax", "torch"} <= set(record["versions"])
    # Which oneDNN ran the convolutions: its version when the extension is loaded.
    assert record["onednn"].startswith("oneDNN 3.") == onednn_active()
    return record


def test_peak_record(records):
    record = load(records, "peak")
    backends = {r["backend"] for r in record["results"]}
    assert "xla" in backends
    assert ("torch" in backends) == (common.import_torch() is not None)
    for row in record["results"]:
        assert row["size"] == 256 and row["dtype"] == "float32"
        assert row["gflops"] > 0 and row["gflops_best"] >= row["gflops"]


def test_train_step_record(records):
    record = load(records, "train_step")
    assert record["xla_float32_peak"]["gflops_best"] > 0
    assert set(record["results"]) == {"dcgan_mnist", "cls_mnist_basic"}
    for name, entry in record["results"].items():
        jax_result = entry["jax"]
        assert TIMED_KEYS <= set(jax_result)
        # CPU time over wall time: some work was done, on no more cores than the machine has.
        assert jax_result["cpu_ms_per_step"] > 0
        assert 0 < jax_result["cores_busy"] <= os.cpu_count() + 0.05
        assert jax_result["flops_per_step"] > 0 and jax_result["fraction_of_f32_peak"] > 0
        assert jax_result["compile_s"] > 0 and "xla_memory" in jax_result
        assert set(jax_result["params"]) == ({"g", "d"} if name.startswith("dcgan") else {"net"})
        assert TIMED_KEYS <= set(entry["jax_bfloat16"])
        assert entry["jax_bfloat16"]["params"] == jax_result["params"]
        assert entry["ratios"]["jax_bfloat16_over_jax"] > 0
        if onednn_active():  # the step beside itself with XLA's convolutions
            assert jax_result["onednn_custom_calls"] > 0
            assert entry["jax_xla_conv"]["onednn_custom_calls"] == 0
            assert entry["ratios"]["jax_over_jax_xla_conv"] > 0
        else:
            assert jax_result["onednn_custom_calls"] == 0
            assert entry["jax_xla_conv"].startswith("skipped: no convolution runs on oneDNN")
        if common.import_torch() is None:
            assert entry["torch"] == torch_baselines.NOT_INSTALLED
        else:
            assert TIMED_KEYS <= set(entry["torch_eager"])
            assert entry["torch_compile"] == "skipped: --no-torch-compile"
            assert entry["ratios"]["jax_over_torch_eager"] > 0
        if "skipped" not in entry["input"]:  # the real MNIST files are present
            assert TIMED_KEYS <= set(entry["input"]["input_pipeline"])
            assert TIMED_KEYS <= set(entry["input"]["end_to_end"])
            assert isinstance(entry["input"]["input_bound"], bool)


def test_bfloat16_is_skipped_for_a_model_without_a_dtype_setting(tmp_path):
    # The autoencoder computes in float32 only: a "bfloat16" run of it would be float32 again.
    record = train_step.main(["--tiny", "--out", str(tmp_path), "--tag", "test", "--only",
                              "ae_cifar10", "--bfloat16", "--no-torch", "--no-input"])
    entry = record["results"]["ae_cifar10"]
    assert entry["jax_bfloat16"] == "skipped: the model has no model.dtype setting"
    assert "jax_bfloat16_over_jax" not in entry["ratios"] and entry["jax"]["ms_per_step"] > 0


def test_scaling_record(records):
    record = load(records, "scaling")
    rows = record["results"]["cls_mnist_basic"]["rows"]
    assert {(r["parallel"], r["devices"]) for r in rows} == {
        (mode, n) for mode in ("shard_map", "pmap") for n in (1, 2)}
    for row in rows:
        assert TIMED_KEYS <= set(row) and row["efficiency"] > 0
    assert all(r["speedup_vs_1"] == 1.0 for r in rows if r["devices"] == 1)


def test_report_writes_markdown_tables(records, tmp_path):
    out = report.main(["--results", str(records), "--out", str(tmp_path / "table.md")])
    text = out.read_text()
    for title in ("### Matmul peak", "### Train step", "### Data-parallel scaling"):
        assert title in text
    assert "| `dcgan_mnist` | 16 |" in text and "| `cls_mnist_basic` | 16 | pmap | 2 |" in text


def test_missing_data_is_skipped_with_its_reason(tmp_path):
    config = common.load_config(common.smoke_spec(common.REGISTRY["cls_mnist"]))
    config.data.path = str(tmp_path / "absent")
    config.data.tfds_name = "no_such_dataset_here"
    result = input_pipeline.measure(config, log=lambda _: None)
    assert result["skipped"].startswith("skipped: real data absent")
    assert "absent" in result["skipped"]


def test_without_torch_the_baselines_say_so(monkeypatch):
    monkeypatch.setattr(common, "import_torch", lambda: None)
    config = common.load_config(common.smoke_spec(common.REGISTRY["dcgan_mnist"]))
    assert torch_baselines.contestants(config) == ([], {"torch": "skipped: torch not installed"})
    assert peak.torch_contestant(64, "float32") is None


def test_a_failing_torch_compile_is_recorded(monkeypatch):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (the bench extra)")

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    config = common.load_config(common.smoke_spec(common.REGISTRY["cls_mnist_basic"]))
    found, skipped = torch_baselines.contestants(config, channels_last="off", log=lambda _: None)
    assert [c.name for c in found] == ["torch_eager"]
    assert skipped["torch_compile"] == "failed: RuntimeError: no C++ compiler"


def _flax_params(config):
    trainer = importlib.import_module(config.trainer)
    state = jax.eval_shape(lambda: trainer.create_state(config))
    nets = {k: getattr(state, k).params for k in train_step.NETWORKS if hasattr(state, k)}
    return {k: sorted(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in nets.items()}


@pytest.mark.parametrize("name", list(common.REGISTRY))
def test_torch_twins_have_the_flax_parameter_counts(name):
    pytest.importorskip("torch", reason="PyTorch is not installed (the bench extra)")
    from benchmarks import torch_models

    config = common.load_config(common.REGISTRY[name])  # full size, as benchmarked
    assert torch_models.unsupported(config) is None
    twins = torch_models.twins_from_config(config)
    flax_sizes = _flax_params(config)
    assert set(twins) == set(flax_sizes)
    for key, twin in twins.items():
        torch_sizes = sorted(p.numel() for p in twin.parameters())
        # The same tensors up to layout: the same sizes, hence the same total.
        assert torch_sizes == flax_sizes[key], key
        assert torch_models.count_parameters(twin) == sum(flax_sizes[key])


def test_dcgan_64_twins_match_the_reference_counts():
    pytest.importorskip("torch", reason="PyTorch is not installed (the bench extra)")
    from benchmarks import torch_models

    config = common.load_config(common.REGISTRY["dcgan_anime"])
    g, d = torch_models.dcgan_from_config(config)
    assert torch_models.count_parameters(g) == 3_576_704
    assert torch_models.count_parameters(d) == 2_765_568


def test_conv_layers_tiny_writes_each_part_per_layer(tmp_path):
    from benchmarks import conv_layers

    record = conv_layers.main(["--tiny", "--out", str(tmp_path), "--tag", "test"])
    saved = json.loads((tmp_path / "conv_layers_test.json").read_text())
    assert saved["benchmark"] == "conv_layers" and saved["tiny"] is True
    assert len(saved["layers"]) == len(conv_layers.TINY) == len(record["layers"])
    for row in saved["layers"]:
        assert set(row["xla_ms"]) == set(conv_layers.PARTS)
        assert all(ms > 0 for ms in row["xla_ms"].values())
        assert row["torch_ms"] is None or set(row["torch_ms"]) == set(conv_layers.PARTS)


def test_pooling_tiny_times_both_implementations_forward_and_backward(tmp_path):
    from benchmarks import pooling

    record = pooling.main(["--tiny", "--out", str(tmp_path), "--tag", "test"])
    saved = json.loads((tmp_path / "pooling_test.json").read_text())
    assert saved["benchmark"] == "pooling" and saved["tiny"] is True
    (rows,) = record["results"].values()
    for impl in ("flax_max_pool", "max_pool_2x2"):
        for part in ("forward", "forward+backward"):
            assert rows[f"{impl} {part}"]["ms_per_step"] > 0
    assert rows["speedup forward+backward"] > 0


def test_batch_norm_tiny_times_both_implementations_on_every_device(tmp_path):
    import jax

    from benchmarks import batch_norm

    record = batch_norm.main(["--tiny", "--out", str(tmp_path), "--tag", "test"])
    saved = json.loads((tmp_path / "batch_norm_test.json").read_text())
    assert saved["benchmark"] == "batch_norm" and saved["tiny"] is True
    (rows,) = record["results"].values()
    for impl in batch_norm.IMPLS:
        assert "error" not in rows[impl]
        assert rows[impl]["ms_per_step"] > 0
        assert rows[impl]["devices"] == len(jax.local_devices())
    assert rows["speedup"] > 0


def test_a_step_with_onednn_calls_takes_its_flops_from_its_xla_twin():
    from benchmarks.train_step import count_convolutions

    entry = {"jax": {"onednn_custom_calls": 4, "flops_per_step": 1e6, "ms_per_step": 10.0},
             "jax_bfloat16": {"onednn_custom_calls": 4, "ms_per_step": 5.0},
             "jax_xla_conv": {"onednn_custom_calls": 0, "flops_per_step": 2e9,
                              "ms_per_step": 20.0}}
    count_convolutions(entry, peak_gflops=400.0)
    assert entry["jax"]["gflops_per_step"] == 2.0 and entry["jax"]["achieved_gflops"] == 200.0
    assert entry["jax"]["fraction_of_f32_peak"] == 0.5
    assert entry["jax_bfloat16"]["achieved_gflops"] == 400.0
    assert entry["jax_xla_conv"]["flops_per_step"] == 2e9  # its own count stays
    plain = {"jax": {"onednn_custom_calls": 0, "flops_per_step": 1e6, "ms_per_step": 10.0}}
    assert count_convolutions(plain, 400.0)["jax"] == {
        "onednn_custom_calls": 0, "flops_per_step": 1e6, "ms_per_step": 10.0}


def test_onednn_verbose_lines_of_both_formats_are_read():
    from benchmarks.onednn_share import primitives

    text = "\n".join([
        "onednn_verbose,info,cpu,runtime:OpenMP,nthr:2",
        "onednn_verbose,exec,cpu,convolution,jit:avx512_core,backward_weights,src_f32::blocked:"
        "acdb::f0,attr-scratchpad:user ,alg:convolution_direct,mb64_ic3oc64_ih64oh32kh4sh2,2.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:bcda::f0,"
        "attr-scratchpad:user,,256x512x4x4,0.25",
        "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,exec_time",
        "a line of the program's own output"])
    found = primitives(text)
    assert [(p.kind, p.problem, p.ms) for p in found] == [
        ("convolution jit:avx512_core backward_weights", "mb64_ic3oc64_ih64oh32kh4sh2", 2.5),
        ("reorder jit:uni undef", "256x512x4x4", 0.25)]
    assert found[0].operation == "convolution backward_weights mb64_ic3oc64_ih64oh32kh4sh2"


def test_onednn_time_is_summed_per_operation_across_implementations():
    from benchmarks.onednn_share import Primitive, per_step

    found = [Primitive("convolution jit:avx512_core forward_training", "mb2_ic3", 1.0),
             Primitive("convolution brgconv:avx512_core forward_training", "mb2_ic3", 3.0),
             Primitive("reorder jit:uni undef", "4x4", 0.5)]
    by_operation = per_step(found, lambda p: p.operation, steps=2)
    assert by_operation == {"convolution forward_training mb2_ic3": {"ms": 2.0, "calls": 1.0},
                            "reorder undef 4x4": {"ms": 0.25, "calls": 0.5}}
    assert list(by_operation) == ["convolution forward_training mb2_ic3", "reorder undef 4x4"]


def test_onednn_share_tiny_splits_each_step_at_onednn(tmp_path):
    from benchmarks import onednn_share
    from common_jax import onednn

    record = onednn_share.main(["--tiny", "--only", "cls_mnist_basic", "--out", str(tmp_path),
                                "--tag", "test"])
    saved = json.loads((tmp_path / "onednn_share_test.json").read_text())
    assert saved["benchmark"] == "onednn_share" and saved["tiny"] is True
    entry = record["results"]["cls_mnist_basic"]
    if not onednn.load():
        assert "skipped" in entry["jax"]
        return
    jax_row = entry["jax"]
    assert jax_row["onednn_primitives"] >= entry["onednn_custom_calls"] > 0
    assert jax_row["onednn_ms"] > 0 and jax_row["ms_per_step"] > 0
    assert any(kind.startswith("convolution") for kind in jax_row["onednn_ms_by_kind"])
    by_operation = jax_row["onednn_by_operation"]
    assert sum(v["calls"] for v in by_operation.values()) == jax_row["onednn_primitives"]
    assert any(op.startswith("convolution forward_training mb") for op in by_operation)


def test_conv_layers_forms_match_their_definition():
    """The timed XLA functions compute the layer (transposed: PyTorch's k4 s2 p1 output size)."""
    from benchmarks import conv_layers

    for layer in conv_layers.TINY:
        x = jax.numpy.ones((layer.batch, layer.size, layer.size, layer.cin))
        w = jax.numpy.ones((layer.kernel, layer.kernel, layer.cin, layer.cout))
        y = conv_layers.xla_functions(layer)["forward"](x, w)
        assert y.shape == (layer.batch, layer.out_size, layer.out_size, layer.cout)


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_matrices_compute_a_two_tap_correlation(m):
    from benchmarks import conv_forms

    bt, g, at = conv_forms.winograd_matrices(m)
    rng = np.random.default_rng(m)
    d, k = rng.standard_normal(m + 1), rng.standard_normal(2)
    np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), np.correlate(d, k, "valid"),
                               rtol=1e-12, atol=1e-12)


def test_conv_forms_compute_the_k4_s2_convolution_and_its_gradients():
    """Every timed form gives lax's values and both gradients (8x8 -> 4x4, so F(4, 2) fits)."""
    from benchmarks import conv_forms

    x, k, dy = conv_forms.layer_data((2, 8, 3, 5))
    want = conv_forms.part_functions(conv_forms.forms()["xla"])
    for name, form in conv_forms.forms().items():
        got = conv_forms.part_functions(form)
        for part in conv_forms.PARTS:
            np.testing.assert_allclose(got[part](x, k, dy), want[part](x, k, dy), rtol=1e-4,
                                       atol=1e-4, err_msg=f"{name} {part}")


def test_conv_forms_tiny_times_every_form_and_part(tmp_path):
    from benchmarks import conv_forms

    record = conv_forms.main(["--tiny", "--out", str(tmp_path), "--tag", "test"])
    saved = json.loads((tmp_path / "conv_forms_test.json").read_text())
    assert saved["benchmark"] == "conv_forms" and saved["tiny"] is True
    rows = record["results"]["tiny 8->4 (4->8)"]
    for form in ("xla", "winograd_f2", "winograd_f4", "im2col"):
        for part in conv_forms.PARTS:
            assert rows[f"{form} {part}"]["ms_per_step"] > 0
    assert rows["winograd_f2_products forward"]["ms_per_step"] > 0


def test_profile_step_tiny_attributes_time_to_the_models_operations(tmp_path):
    from benchmarks import profile_step

    profile_step.main(["--tiny", "--only", "cls_mnist_basic", "--out", str(tmp_path),
                       "--tag", "test", "--trace-dir", str(tmp_path / "traces")])
    record = json.loads((tmp_path / "profile_step_test.json").read_text())
    assert record["benchmark"] == "profile_step" and record["tiny"] is True
    result = record["results"]["cls_mnist_basic"]
    assert result["ops_matched_to_hlo"] > 0 and result["op_ms_per_step"] > 0
    assert result["by_kind"]["convolution"]["ms_per_step"] > 0
    assert abs(sum(v["share"] for v in result["by_kind"].values()) - 1) < 0.01
    convs = [r for r in result["top_ops"] if r["kind"] == "convolution"]
    assert convs and all(r["shape"].startswith("f32[") for r in convs)
    assert any("conv" in r.get("op_name", "") for r in convs)


def test_hlo_lines_are_read_with_opcode_shape_and_origin():
    from benchmarks import profile_step

    text = ('  %convolution.7 = f32[8,14,14,32]{3,2,1,0} convolution(f32[8,28,28,1]{3,2,1,0} %p, '
            'f32[5,5,1,32]{3,2,1,0} %w), window={size=5x5}, metadata={op_name="jit(step)/conv0/'
            'conv_general_dilated" source_file="/x/cnn.py" source_line=90}\n'
            '  ROOT %fusion.2 = f32[8]{0} fusion(f32[8,10]{1,0} %a), kind=kLoop, calls=%f\n')
    ops = profile_step.hlo_instructions(text)
    assert ops["convolution.7"] == {"opcode": "convolution", "shape": "f32[8,14,14,32]",
                                    "op_name": "jit(step)/conv0/conv_general_dilated",
                                    "source": "cnn.py:90"}
    assert ops["fusion.2"]["opcode"] == "fusion" and ops["fusion.2"]["fusion_kind"] == "kLoop"
    assert "contains" not in ops["fusion.2"]
    assert profile_step.kind_of("fusion.2", ops["fusion.2"]) == "fusion (elementwise)"


def test_a_onednn_custom_call_is_counted_as_a_convolution():
    from benchmarks import profile_step

    text = ('  %custom-call.3 = f32[8,14,14,32]{3,2,1,0} custom-call(f32[8,28,28,1]{3,2,1,0} %p, '
            'f32[5,5,1,32]{3,2,1,0} %w), custom_call_target="OnednnConvForward", '
            'metadata={op_name="jit(step)/conv0/ffi_call"}\n'
            '  %custom-call.4 = f32[8]{0} custom-call(f32[8]{0} %a), '
            'custom_call_target="SomethingElse"\n')
    ops = profile_step.hlo_instructions(text)
    assert ops["custom-call.3"]["target"] == "OnednnConvForward"
    assert profile_step.kind_of("custom-call.3", ops["custom-call.3"]) == "convolution"
    assert profile_step.kind_of("custom-call.4", ops["custom-call.4"]) == "other"


def test_a_fusion_is_counted_as_the_convolution_it_holds():
    from benchmarks import profile_step

    text = ('%fused_computation.9 (p0: f32[8,8,8,4], p1: f32[3,3,4,4]) -> f32[8,8,8,4] {\n'
            '  %p0 = f32[8,8,8,4]{3,2,1,0} parameter(0)\n'
            '  %c = f32[8,8,8,4]{3,2,1,0} convolution(%p0, %p1), metadata={op_name="jit(s)/'
            'up0/conv_general_dilated"}\n'
            '  ROOT %r = f32[8,8,8,4]{3,2,1,0} maximum(%c, %z)\n'
            '}\n\n'
            'ENTRY %main.1 (a: f32[8,8,8,4]) -> f32[8,8,8,4] {\n'
            '  ROOT %ynn_fusion.9 = f32[8,8,8,4]{3,2,1,0} fusion(%a, %w), kind=kCustom, '
            'calls=%fused_computation.9\n'
            '}\n')
    ops = profile_step.hlo_instructions(text)
    fusion = ops["ynn_fusion.9"]
    assert fusion["contains"] == "convolution"
    assert fusion["op_name"] == "jit(s)/up0/conv_general_dilated"  # taken from the convolution
    assert profile_step.kind_of("ynn_fusion.9", fusion) == "convolution"
    assert profile_step.kind_of("Rendezvous", None) == "waiting"


def test_allocator_tiny_runs_each_allocator_in_its_own_process(tmp_path):
    from benchmarks import allocator

    record = allocator.main(["--tiny", "--out", str(tmp_path), "--tag", "test"])
    saved = json.loads((tmp_path / "allocator_test.json").read_text())
    assert saved["benchmark"] == "allocator" and saved["tiny"] is True
    entry = saved["results"]["train:cls_mnist_basic"]
    expected = {"glibc", "tcmalloc"} if record["tcmalloc"] else {"glibc"}
    assert expected <= set(entry)
    for name in expected:
        assert entry[name]["images_per_s"] > 0 and entry[name]["minor_faults"] >= 0, entry[name]
        assert 0 <= entry[name]["sys_share"] <= 1 and entry[name]["peak_rss_mb"] > 0
    if record["tcmalloc"]:
        assert entry["tcmalloc_speedup"] > 0
    else:
        assert "libtcmalloc-minimal4" in saved["skipped"]
    table = report.render(tmp_path)
    assert "### The memory allocator" in table and "| `train:cls_mnist_basic` |" in table


def test_allocator_refuses_unknown_work():
    from benchmarks import allocator

    with pytest.raises(SystemExit):
        allocator.parse_args(["--work", "train:no_such_model"])


def test_compare_runs_counts_bitwise_equal_leaves():
    from benchmarks.compare_runs import compare

    a = {"g": {"w": np.ones((2, 2), np.float32)}, "step": np.int32(3)}
    assert compare(a, a)[:2] == (2, 2)
    b = {"g": {"w": np.ones((2, 2), np.float32) + 1e-7}, "step": np.int32(3)}
    equal, total, lines = compare(a, b)
    assert (equal, total) == (1, 2) and "['g']['w']: max |difference|" in lines[0]


def test_cyclegan_twins_match_the_reference_counts_and_shapes():
    """The paper's 256-px networks have the reference's counts less the biases of the convs
    before a norm (5,248 in G, 896 in D), as the Flax model; at the benchmarked size the twins'
    outputs have the Flax networks' shapes (NCHW against NHWC)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (the bench extra)")
    from benchmarks import torch_models
    from gans_jax.trainers import cyclegan

    base = common.load_config("gans_jax/configs/cyclegan_base.py")
    counts = {k: torch_models.count_parameters(net)
              for k, net in torch_models.cyclegan_from_config(base).items()}
    g, d = 11_378_179 - 5_248, 2_764_737 - 896
    assert counts == {"g_ab": g, "g_ba": g, "d_a": d, "d_b": d}

    config = common.load_config(common.REGISTRY["cyclegan_facemask"])
    m = config.model
    twins = torch_models.cyclegan_from_config(config)
    images = jax.ShapeDtypeStruct((2, m.image_size, m.image_size, m.channels), np.float32)
    for name, model in (("g_ab", cyclegan.make_generator(config)),
                        ("d_a", cyclegan.make_discriminator(config))):
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
        b, h, w, c = jax.eval_shape(model.apply, variables, images).shape
        with torch.no_grad():
            out = twins[name](torch.zeros(2, m.channels, m.image_size, m.image_size))
        assert tuple(out.shape) == (b, c, h, w), name


def test_torch_image_pool_fills_then_swaps_half_the_time():
    """The reference's pool: the first `size` fakes are stored and shown; afterwards each
    shown image is the fake itself or one stored before, and the pool keeps `size` images."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (the bench extra)")

    pool = torch_baselines.ImagePool(torch, 3, seed=0, memory_format=torch.contiguous_format)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)
    seen, stored_shown, own_shown = set(range(3)), 0, 0
    for i in range(3, 60):
        fake = torch.full((1, 1, 1, 1), float(i))
        shown = int(pool.query(fake).item())
        assert shown in seen | {i} and len(pool.images) == 3
        stored_shown += shown != i
        own_shown += shown == i
        seen.add(i)
    assert stored_shown > 10 and own_shown > 10  # both branches taken, about half each
    assert torch.equal(torch_baselines.ImagePool(torch, 0, 0, None).query(first), first)


def test_train_step_tiny_runs_the_cyclegan_beside_its_twin(tmp_path):
    """The two-domain step: a batch per stream, the four networks' counts equal the twin's,
    the rates count pairs, the single-stream input measurement is skipped with its reason."""
    record = train_step.main(["--tiny", "--out", str(tmp_path), "--tag", "test",
                              "--only", "cyclegan_facemask", "--no-torch-compile"])
    entry = record["results"]["cyclegan_facemask"]
    assert entry["config"].endswith("cyclegan_facemask.py:smoke")
    assert TIMED_KEYS <= set(entry["jax"]) and entry["jax"]["flops_per_step"] > 0
    params = entry["jax"]["params"]
    assert set(params) == {"g_ab", "g_ba", "d_a", "d_b"}
    assert entry["images_counted"].startswith("pairs")
    assert entry["input"]["skipped"].startswith("skipped: two-stream")
    if common.import_torch() is None:
        assert entry["torch"] == torch_baselines.NOT_INSTALLED
        return
    from benchmarks import torch_models

    config = common.load_config(entry["config"])
    twins = torch_models.cyclegan_from_config(config)
    assert params == {k: torch_models.count_parameters(net) for k, net in twins.items()}
    assert TIMED_KEYS <= set(entry["torch_eager"])
    assert entry["ratios"]["jax_over_torch_eager"] > 0


def test_a_scoring_gan_step_builds_without_the_fid_weights(tmp_path, monkeypatch):
    """dcgan_cifar10 scores samples with FID while training; its benchmark step builds on a
    machine without the Inception weights (an empty cache here), where the config as trained
    would stop for them."""
    from common_jax.errors import UserError
    from gans_jax import evaluation
    from gans_jax.configs import dcgan_cifar10

    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="make fid-weights"):
        evaluation.scorer_for(dcgan_cifar10.get_config())
    config = common.load_config(common.REGISTRY["dcgan_cifar10"])
    assert config.metrics.inception is False and config.metrics.judge_workdir == ""
    step = train_step.JaxStep(config)
    step.run(1)
    assert step.params


def test_cpu_usage_is_cpu_time_over_wall_time():
    usage = common.cpu_usage([0.1, 0.3], [0.2, 0.4])
    assert usage == {"cpu_ms_per_step": 300.0, "cores_busy": 1.5}
