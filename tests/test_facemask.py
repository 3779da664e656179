"""Tests of gans_jax.facemask: the mask drawer, the domain builder and the remover's evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common_jax.errors import UserError
from gans_jax import facemask as fm
from tests.conftest import shared_data


def smooth_face(seed: int, size: int = 48) -> np.ndarray:
    """A face-like gray image: a bright oval with darker eyes and mouth, plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    face = 60 + 130 * (((x - 0.5) / 0.4) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1)
    for cx in (0.33, 0.67):
        face = face - 50 * (((x - cx) / 0.08) ** 2 + ((y - 0.38) / 0.04) ** 2 < 1)
    face = face - 40 * (((x - 0.5) / 0.15) ** 2 + ((y - 0.77) / 0.04) ** 2 < 1)
    return np.clip(face + rng.normal(0, 8, face.shape), 0, 255).astype(np.uint8)


def write_fer(root: Path, counts: dict[str, int]) -> Path:
    """A tiny FER2013-like folder: <split>/<emotion>/<Prefix>_<n>.jpg, 48x48 gray."""
    prefixes = {"train": "Training", "validation": "PublicTest", "test": "PrivateTest"}
    n = 0
    for split, count in counts.items():
        for i in range(count):
            emotion = ("happy", "sad")[i % 2]
            folder = root / split / emotion
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(smooth_face(n)).save(folder / f"{prefixes[split]}_{1000 + n}.jpg")
            n += 1
    return root


@pytest.fixture
def fer(tmp_path) -> Path:
    return write_fer(tmp_path / "fer", {"train": 12, "validation": 2, "test": 7})


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != fm.MANIFEST}


# ----------------------------------------------------------------------------------------------
# The drawer


def test_drawer_is_deterministic_from_the_seed():
    face = smooth_face(0)
    first, again = fm.put_mask(face, (0, 1, 2)), fm.put_mask(face, (0, 1, 2))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.region, again.region)
    assert first.kind == again.kind
    other = fm.put_mask(face, (0, 1, 3))
    assert not np.array_equal(first.image, other.image)


@pytest.mark.parametrize("kind", fm.MASK_KINDS)
def test_masks_cover_nose_to_chin_and_nothing_else_changes(kind):
    face = smooth_face(1)
    fractions = []
    for seed in range(25):
        masked = fm.put_mask(face, seed, kind=kind)
        assert masked.kind == kind and masked.image.dtype == np.uint8
        assert masked.image.shape == (48, 48, 3) and masked.region.dtype == np.bool_
        rows = np.flatnonzero(masked.region.any(axis=1))
        centre = np.flatnonzero(masked.region[:, 20:28].any(axis=1))
        assert rows.min() >= 16  # the eyes (row ~18 and above) stay free
        assert 19 <= centre.min() <= 27 and centre.max() >= 45  # nose bridge to under the chin
        assert masked.region[30:44, 20:28].all()  # nose tip, mouth and chin covered
        outside = ~masked.region
        assert np.array_equal(masked.image[outside], np.repeat(face[..., None], 3, -1)[outside])
        fractions.append(masked.region.mean())
    assert 0.15 < min(fractions) and max(fractions) < 0.55


def test_kinds_patterns_and_tilts_vary():
    face = smooth_face(2)
    masks = [fm.put_mask(face, seed) for seed in range(60)]
    assert {m.kind for m in masks} == set(fm.MASK_KINDS)
    # Masks of one kind differ in colour and placement: compare the region outlines and the
    # mean colour inside them.
    cloth = [m for m in masks if m.kind == "cloth"]
    colours = {tuple(np.round(m.image[m.region].mean(axis=0) / 32)) for m in cloth}
    outlines = {m.region.tobytes() for m in cloth}
    assert len(colours) > 3 and len(outlines) == len(cloth)


def test_gray_rgb_and_other_face_sizes():
    gray = smooth_face(3)
    from_gray = fm.put_mask(gray, 5)
    from_rgb = fm.put_mask(np.repeat(gray[..., None], 3, -1), 5)
    assert np.array_equal(from_gray.image, from_rgb.image)
    big = fm.put_mask(np.asarray(Image.fromarray(gray).resize((96, 96))), 5)
    assert big.image.shape == (96, 96, 3)
    assert abs(big.region.mean() - from_gray.region.mean()) < 0.05  # geometry scales
    with pytest.raises(ValueError, match="unknown mask kind"):
        fm.put_mask(gray, 0, kind="scarf")
    with pytest.raises(ValueError, match="square"):
        fm.put_mask(np.zeros((48, 40), np.uint8), 0)


# ----------------------------------------------------------------------------------------------
# The builder


def test_builder_layout_halves_and_ground_truth(fer, tmp_path):
    out = tmp_path / "domains"
    manifest = fm.build_domains(fer, out, seed=0)
    assert manifest["counts"] == {"trainA": 6, "trainB": 6, "testA": 3, "testB": 4}
    stems = {d: sorted(p.stem for p in (out / d).glob("*.png"))
             for d in ("trainA", "trainB", "testA", "testA_original", "testA_mask", "testB")}
    train_names = {f"{e.parent.name}_{e.stem}" for e in (fer / "train").rglob("*.jpg")}
    test_names = {f"{e.parent.name}_{e.stem}" for e in (fer / "test").rglob("*.jpg")}
    assert not set(stems["trainA"]) & set(stems["trainB"])  # unpaired: disjoint halves
    assert set(stems["trainA"]) | set(stems["trainB"]) == train_names
    assert not set(stems["testA"]) & set(stems["testB"])
    assert set(stems["testA"]) | set(stems["testB"]) == test_names
    assert stems["testA"] == stems["testA_original"] == stems["testA_mask"]

    name = stems["testA"][0]
    masked = np.asarray(Image.open(out / "testA" / f"{name}.png"))
    original = np.asarray(Image.open(out / "testA_original" / f"{name}.png"))
    mask = np.asarray(Image.open(out / "testA_mask" / f"{name}.png")) > 127
    assert masked.shape == original.shape == (48, 48, 3) and mask.shape == (48, 48)
    assert np.array_equal(masked[~mask], original[~mask])
    assert (original[..., 0] == original[..., 2]).all()  # gray faces saved as RGB
    source = np.asarray(Image.open(next((fer / "test").rglob(f"{name.split('_', 1)[1]}.jpg"))))
    assert np.array_equal(original[..., 0], source)
    saved = json.loads((out / fm.MANIFEST).read_text())
    assert saved["settings"]["seed"] == 0 and sum(saved["mask_kinds"].values()) == 9


def test_builder_is_deterministic_and_idempotent(fer, tmp_path):
    first, second, reseeded = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    fm.build_domains(fer, first, seed=0)
    fm.build_domains(fer, second, seed=0)
    fm.build_domains(fer, reseeded, seed=1)
    assert files_of(first) == files_of(second)
    assert files_of(first) != files_of(reseeded)

    marker = first / "trainA" / "kept.txt"
    marker.write_text("a rebuild would remove this")
    stamp = (first / "trainA").stat().st_mtime_ns
    fm.build_domains(fer, first, seed=0)  # same source and seed: kept as it is
    assert marker.exists() and (first / "trainA").stat().st_mtime_ns == stamp
    fm.build_domains(fer, first, seed=1)  # another seed: rebuilt in place
    assert not marker.exists() and files_of(first) == files_of(reseeded)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_builder_refuses_foreign_folders_and_missing_sources(fer, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a build")
    with pytest.raises(UserError, match="not a face-mask build .*choose another --out"):
        fm.build_domains(fer, mine)
    with pytest.raises(UserError, match="not found; pass --source"):
        fm.build_domains(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(UserError, match="--limit 1"):
        fm.build_domains(fer, tmp_path / "out", limit=1)


def test_build_cli_and_limit(fer, tmp_path, capsys):
    out = tmp_path / "cli"
    fm.main(["build", "--source", str(fer), "--out", str(out), "--limit", "4", "--seed", "3"])
    assert "trainA 2, trainB 2, testA 2, testB 2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        fm.main(["build", "--source", str(tmp_path / "missing"), "--out", str(out)])
    assert info.value.code == 2 and "error: FER2013 source" in capsys.readouterr().err


def test_builder_on_the_real_fer_archive(tmp_path):
    archive = shared_data("fer2013-48.tar.gz")
    manifest = fm.build_domains(archive, tmp_path / "real", seed=0, limit=16)
    assert manifest["counts"] == {"trainA": 8, "trainB": 8, "testA": 8, "testB": 8}
    names = [p.name for p in (tmp_path / "real" / "testA").glob("*.png")]
    assert all(n.split("_")[1] == "PrivateTest" for n in names)  # FER's test split
    masks = fm.load_heldout(tmp_path / "real").region
    assert 0.15 < masks.mean() < 0.55


# ----------------------------------------------------------------------------------------------
# The evaluation


@pytest.fixture
def domains(fer, tmp_path) -> Path:
    out = tmp_path / "domains"
    fm.build_domains(fer, out, seed=0)
    return out


def test_identity_scores_exactly_the_masked_input(domains):
    result = fm.evaluate_remover(lambda x: x, domains, batch_size=2, fid=False)
    rows = result["rows"]
    assert result["num_images"] == 3 and set(rows) == {"generator", "masked_input",
                                                       "inpaint_telea"}
    assert rows["generator"] == rows["masked_input"]
    assert rows["generator"]["mean_abs_change"] == 0.0
    masked = rows["masked_input"]
    assert np.isfinite(masked["psnr"]) and masked["psnr"] < masked["psnr_mask"] + 30
    assert masked["psnr_mask"] < masked["psnr"]  # all the error is inside the mask
    assert masked["mean_abs_change_outside_mask"] == 0.0
    telea = rows["inpaint_telea"]
    assert telea["mean_abs_change_outside_mask"] == 0.0  # inpainting keeps the rest
    assert telea["mean_abs_change"] > 0.0 and np.isfinite(telea["psnr_mask"])
    text = fm.format_table(result)
    assert "masked input" in text and "Telea" in text


def test_an_oracle_reaches_the_psnr_cap(domains):
    held = fm.load_heldout(domains)
    originals = fm.to_model_input(held.original)
    served = []

    def oracle(batch: np.ndarray) -> np.ndarray:
        start = sum(served)
        rows = min(len(batch), len(originals) - start)
        served.append(rows)
        out = batch.copy()
        out[:rows] = originals[start:start + rows]
        return out

    result = fm.evaluate_remover(oracle, domains, batch_size=2, fid=False)
    row = result["rows"]["generator"]
    assert row["psnr"] == row["psnr_mask"] == fm.PSNR_CAP_DB  # inf, capped and counted
    assert row["images_at_psnr_cap"] == 3 and row["ssim"] == 1.0 and row["mse"] == 0.0
    json.dumps(result, allow_nan=False)  # a plain JSON table: no infinities


def test_fid_is_skipped_without_weights_and_bad_inputs_are_named(domains, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "empty_cache"))
    result = fm.evaluate_remover(lambda x: x, domains, limit=2)
    assert result["num_images"] == 2 and "make fid-weights" in result["inception"]["skipped"]
    with pytest.raises(UserError, match="make fid-weights"):
        fm.evaluate_remover(lambda x: x, domains, limit=2, fid=True)
    with pytest.raises(ValueError, match="returned shape"):
        fm.evaluate_remover(lambda x: x[:, :8], domains, fid=False)
    with pytest.raises(UserError, match="no testA, testA_original, testA_mask folder; build"):
        fm.load_heldout(tmp_path / "nothing")
    os.remove(next((domains / "testA_mask").glob("*.png")))
    with pytest.raises(UserError, match="lack their original or mask"):
        fm.load_heldout(domains)


def test_fit_to_model_resizes_and_converts_channels():
    seen = []

    def gray_model(x):
        seen.append(x.shape)
        return -x

    adapted = fm.fit_to_model(gray_model, 32, 1)
    images = np.zeros((2, 48, 48, 3), np.float32) + 0.5
    out = adapted(images)
    assert seen == [(2, 32, 32, 1)] and out.shape == (2, 48, 48, 3)
    np.testing.assert_allclose(out, -0.5, atol=1e-5)


def test_evaluate_cli_writes_the_table_into_summary(domains, tmp_path, monkeypatch, capsys):
    import ml_collections

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "summary.json").write_text(json.dumps({"wall_time_s": 1.0}))
    config = ml_collections.ConfigDict({"data": {"a": {"path": str(domains)}}})
    monkeypatch.setattr(fm, "restore_translator", lambda _workdir: (config, lambda x: x))
    fm.main(["evaluate", "--workdir", str(workdir), "--no_fid", "--batch_size", "2"])
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["wall_time_s"] == 1.0  # the rest of the summary is kept
    assert summary["facemask"]["domains"] == str(domains)  # the run's domain A build
    assert summary["facemask"]["rows"]["generator"] == summary["facemask"]["rows"]["masked_input"]
    assert "face-mask removal on 3 held-out faces" in capsys.readouterr().out


def test_example_grid(domains, tmp_path):
    out = tmp_path / "grid.png"
    fm.main(["examples", "--domains", str(domains), "--out", str(out), "--num", "2"])
    grid = np.asarray(Image.open(out))
    assert grid.shape == (4 * 96, 2 * 96, 3)  # original, masked, mask, Telea; 2x enlarged


def test_evaluate_cli_on_a_trained_cyclegan(tmp_path, capsys):
    cyclegan = pytest.importorskip("gans_jax.trainers.cyclegan",
                                   reason="the CycleGAN trainer is not in this tree")
    cyclegan_base = pytest.importorskip("gans_jax.configs.cyclegan_base")

    domains, workdir = tmp_path / "domains", tmp_path / "run"
    fer = write_fer(tmp_path / "fer", {"train": 16, "test": 8})  # a batch for 8 devices
    fm.build_domains(fer, domains, seed=0)
    config = cyclegan_base.get_config("smoke")
    for section in (config.data.a, config.data.b):
        section.path, section.tfds_name = str(domains), ""
    config.batch_size, config.num_steps, config.checkpoint_every = 8, 2, 2
    config.sample_every = 2
    cyclegan.train_and_evaluate(config, str(workdir))
    fm.main(["evaluate", "--workdir", str(workdir), "--no_fid"])  # 16-pixel model, 48 faces
    summary = json.loads((workdir / "summary.json").read_text())["facemask"]
    assert summary["num_images"] == 4 and summary["domains"] == str(domains)
    generator = summary["rows"]["generator"]
    assert generator["mean_abs_change"] > 0 and np.isfinite(generator["ssim_mask"])
    assert "generator G(masked)" in capsys.readouterr().out


def test_fid_and_kid_of_the_outputs_against_test_b(domains, tmp_path, monkeypatch):
    import flax.linen as nn
    import jax

    from common_jax.metrics import gan_metrics as gm
    from common_jax.metrics import inception as inception_lib

    class MeanColour(nn.Module):  # stands in for Inception (minutes per batch on CPU)
        @nn.compact
        def __call__(self, x):
            return {"pool3": nn.Dense(4)(x.mean(axis=(1, 2)) / 255.0)}

    module = MeanColour()
    variables = module.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"present")
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inception_lib, "default_weights_path", lambda: weights)
    monkeypatch.setattr(gm, "load_feature_network", lambda: gm.FeatureNetwork(
        module, variables, "mean-colour", "hash0", "bilinear", image_size=8))
    result = fm.evaluate_remover(lambda x: x, domains, fid=True)["inception"]
    assert np.isfinite(result["fid"]) and np.isfinite(result["kid_mean"])
    protocol = result["protocol"]
    assert (protocol["n_real"], protocol["n_fake"], protocol["reference_split"]) == (4, 3, "testB")
    assert protocol["reference_dataset"].startswith("facemask-")
