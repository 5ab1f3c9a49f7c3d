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
