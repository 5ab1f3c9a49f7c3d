"""Saved / pretrained reconstruction regressors: round trip, bad files, the bundled asset, the joint wiring
and the `lh2face regressor` command at toy scale."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.coeffs import CoeffLayout
from recon.regressor import (CoeffRegressor, RegressorLoadError, build_regressor, default_regressor_path,
                             load_pretrained_regressor, save_regressor)

PHOTOS = Path(__file__).parent / "fixtures" / "photos"


def _perturbed(width: int = 8, size: int = 40) -> CoeffRegressor:
    torch.manual_seed(0)
    reg = CoeffRegressor(CoeffLayout(), image_size=size, width=width, hidden=16)
    with torch.no_grad():
        for p in reg.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return reg.eval()


def test_save_load_round_trip_float16(tmp_path):
    reg = _perturbed()
    path = tmp_path / "r.pt"
    save_regressor(reg, path, meta={"note": "x"})
    back = load_pretrained_regressor(path)
    assert back.architecture() == reg.architecture() and back.meta == {"note": "x"} and not back.training
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(back(x), reg(x), rtol=2e-2, atol=2e-2)  # float16 storage
    full = tmp_path / "f.pt"
    save_regressor(reg, full, half=False)
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained_regressor(full)(x), reg(x))


def test_bad_regressor_files_give_one_clear_error(tmp_path):
    with pytest.raises(RegressorLoadError, match="no such checkpoint.*lh2face regressor"):
        load_pretrained_regressor(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a regressor at all" * 10)
    with pytest.raises(RegressorLoadError, match="junk.pt"):
        load_pretrained_regressor(junk)
    good = tmp_path / "good.pt"
    save_regressor(_perturbed(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(RegressorLoadError, match="cut.pt"):
        load_pretrained_regressor(cut)
    from lh2face.io import save_checkpoint

    other = tmp_path / "other.pt"
    save_checkpoint(other, {"step": 3})
    with pytest.raises(RegressorLoadError, match="not a saved CoeffRegressor"):
        load_pretrained_regressor(other)


def test_build_regressor_init_choices(tmp_path):
    fresh = build_regressor("none", {}, image_size=48)
    assert fresh.image_size == 48 and torch.allclose(fresh(torch.rand(1, 3, 48, 48)), CoeffLayout().mean_frontal(1))
    small = build_regressor("default", {"width": 8}, image_size=48)  # another architecture: from scratch
    assert small.architecture()["width"] == 8
    path = tmp_path / "r.pt"
    save_regressor(_perturbed(size=40), path)
    loaded = build_regressor(str(path), {}, image_size=112)
    assert loaded.image_size == 40 and loaded.training  # ready to be trained further
    with pytest.raises(ValueError, match="regressor_init: none"):
        build_regressor(str(path), {"width": 16})


def test_bundled_regressor_beats_the_mean_face_on_unseen_synthetic_identities():
    from recon.morphable import MorphableModel
    from recon.pretrain import identity_vertex_error, synth_options
    from recon.synth import SyntheticFaces

    path = default_regressor_path()
    assert path.is_file() and path.stat().st_size < 5e6
    reg = load_pretrained_regressor()
    assert reg.meta["vertex_error_mm"] < reg.meta["vertex_error_mm_mean_face"]
    # identities of a seed neither training (1) nor the command's evaluation (2) used
    ds = SyntheticFaces(12, 1, seed=5, image_size=reg.image_size, options=synth_options((30, 15, 10)))
    b = ds.render_batch(range(len(ds)))
    images = (b["image"].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    mm = MorphableModel()
    err = identity_vertex_error(reg, images, b["coeffs"].numpy(), mm).mean()
    base = identity_vertex_error(None, images, b["coeffs"].numpy(), mm).mean()
    assert err < base, (err, base)


def test_joint_trunk_starts_from_the_pretrained_regressor():
    from joint.config import ReconConfig
    from joint.model import JointTrunk

    reg = load_pretrained_regressor()
    trunk = JointTrunk(torch.nn.Identity(), "rgb+canonical+depth", 48, True, ReconConfig())
    assert trunk.regressor_size == reg.image_size
    for k, v in reg.state_dict().items():
        torch.testing.assert_close(trunk.regressor.state_dict()[k], v)
    scratch = JointTrunk(torch.nn.Identity(), "rgb+canonical+depth", 48, True, ReconConfig(regressor_init="none"))
    assert scratch.regressor_size == 48
    x = torch.rand(2, 3, 48, 48)
    torch.testing.assert_close(scratch.regressor(x), CoeffLayout().mean_frontal(2))


def test_regressor_command_toy_scale(tmp_path):
    from joint.cli import main

    for root in ("att", "lfw"):
        for k, src in enumerate(sorted(PHOTOS.glob("*.jpg"))[:3] if root == "lfw" else sorted(PHOTOS.glob("*.jpg"))[2:]):
            d = tmp_path / root / f"p{k}"
            d.mkdir(parents=True)
            shutil.copy(src, d / src.name)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["regressor", "--att", str(tmp_path / "att"), "--lfw", str(tmp_path / "lfw"), "--lfw-train-people", "2",
            "--out", str(out), "--work", str(work), "--size", "32", "--width", "8", "--steps", "3", "--batch-size", "4",
            "--synth-identities", "3", "--synth-images", "2", "--eval-identities", "2", "--fit-photos", "0",
            "--threads", "1", "--quiet"]
    assert main(args) == 0
    reg = load_pretrained_regressor(out / "regressor.pt")
    assert reg.image_size == 32 and reg.meta["heldout_real_crops"] == 1 and reg.meta["real_train_crops"] == 4
    assert "vertex error" in (out / "README.md").read_text() and (work / "landmarks" / "lfw-dev.npz").is_file()
    assert main(args) == 2  # refuses to overwrite without --overwrite
    assert main(args + ["--overwrite"]) == 0  # the rerun reads the caches


def _toy_folders(tmp_path: Path) -> list:
    for root in ("att", "lfw"):
        for k, src in enumerate(sorted(PHOTOS.glob("*.jpg"))[:3] if root == "lfw" else sorted(PHOTOS.glob("*.jpg"))[2:]):
            d = tmp_path / root / f"p{k}"
            d.mkdir(parents=True)
            shutil.copy(src, d / src.name)
    return ["regressor", "--att", str(tmp_path / "att"), "--lfw", str(tmp_path / "lfw"), "--lfw-train-people", "2",
            "--work", str(tmp_path / "work"), "--size", "32", "--width", "8", "--batch-size", "4",
            "--synth-identities", "3", "--synth-images", "2", "--eval-identities", "2", "--fit-photos", "0",
            "--threads", "1", "--quiet", "--device", "cpu"]


def test_regressor_time_budget_stops_cleanly_and_crops_travel_without_images(tmp_path, capsys, monkeypatch):
    import json

    from joint.cli import main

    args = _toy_folders(tmp_path)
    assert main(args + ["--out", str(tmp_path / "a"), "--steps", "2"]) == 0  # makes the caches (dlib)
    # the --work folder alone (crops cached there) is enough: no images, no detector needed
    shutil.rmtree(tmp_path / "att")
    shutil.rmtree(tmp_path / "lfw")
    import recon.landmarks as lmk
    from recon.landmarks.base import DetectorUnavailable

    def no_dlib(*a, **k):
        raise DetectorUnavailable("dlib is not installed")

    monkeypatch.setattr(lmk, "build_detector", no_dlib)
    out = tmp_path / "b"
    capsys.readouterr()
    assert main(args + ["--out", str(out), "--steps", "1000000", "--time-budget", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 1 <= m["steps_done"] < 1000000 and m["stopped_by_time_budget"] is True and m["device"] == "cpu"
    assert m["steps_seconds"] < 10.0 and np.isfinite(m["vertex_error_mm"]) and np.isfinite(m["final_loss"])
    reg = load_pretrained_regressor(out / "regressor.pt")
    assert reg.meta["steps_done"] == m["steps_done"] and reg.image_size == 32
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"regressor summary: {m['steps_done']}/1000000 steps (stopped by --time-budget)")
    assert f"{m['vertex_error_mm']:.3f} mm vs mean face {m['vertex_error_mm_mean_face']:.3f} mm" in line
    # a missing landmark cache where dlib cannot run: one clear error naming the cache
    (tmp_path / "work" / "crops_lfw-dev_32.npz").unlink()
    (tmp_path / "work" / "landmarks" / "lfw-dev.npz").unlink()
    (tmp_path / "lfw" / "p0").mkdir(parents=True)
    shutil.copy(sorted(PHOTOS.glob("*.jpg"))[0], tmp_path / "lfw" / "p0")
    (tmp_path / "lfw" / "p1").mkdir()
    shutil.copy(sorted(PHOTOS.glob("*.jpg"))[1], tmp_path / "lfw" / "p1")
    (tmp_path / "lfw" / "p2").mkdir()
    shutil.copy(sorted(PHOTOS.glob("*.jpg"))[2], tmp_path / "lfw" / "p2")
    assert main(args + ["--out", str(tmp_path / "c"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "lfw-dev.npz: no landmark cache" in err and "dlib" in err and "--work" in err


def test_train_regressor_time_budget_stops_a_huge_run():
    from recon.fitting import train_regressor
    from recon.morphable import MorphableModel
    from recon.regressor import CoeffRegressor

    model = MorphableModel()
    layout = CoeffLayout.from_model(model)
    imgs = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    lms = np.tile(np.linspace(8, 24, 136, dtype=np.float32).reshape(1, 68, 2), (4, 1, 1))
    torch.manual_seed(0)
    reg = CoeffRegressor(layout, image_size=32, width=8, hidden=16)
    reg, hist = train_regressor(imgs, lms, reg, model, steps=10 ** 6, batch_size=2, lr=1.0, time_budget=0.5,
                                callback=lambda s, r: None)
    assert 1 <= len(hist) < 10 ** 6 and all(np.isfinite(h["total"]) for h in hist)
    assert [h["step"] for h in hist] == list(range(len(hist)))


def test_synthetic_arrays_with_worker_processes_equal_one_process():
    from recon.pretrain import synth_options, synthetic_arrays
    from recon.synth import SyntheticFaces

    ds = SyntheticFaces(3, 2, seed=5, image_size=24, options=synth_options((30, 15, 10)))
    one = synthetic_arrays(ds, None, chunk=2, progress=False)
    two = synthetic_arrays(ds, None, chunk=2, progress=False, workers=2)
    assert one["image"].shape == (6, 24, 24, 3) and one["image"].std() > 0
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])
