"""Real photos end to end: `lh2face align` -> a 3-step joint `lh2face train` whose L_reco has its landmark
term (from the sidecar) -> `lh2face export --model RUN` / `visualize --model RUN` on fixture photos.

Truths used: the exported coefficients and canonical / depth renders equal what the run's regressor gives
directly on the same aligned crop (and the crop equals the one `lh2face align` wrote); refinement from
the regressor lowers the landmark error it reports against the detected landmarks.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from joint.cli import main
from lh2face.io import read_image

from helpers import PHOTOS as FIXTURES, identity_tree

pytest.importorskip("dlib", reason="the dlib landmark backend (dlib-bin) is not installed")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHOTOS = [FIXTURES / "Hu_Jintao_0001.jpg", FIXTURES / "att_s1_1.pgm"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("realrun")
    aligned = tmp / "aligned"
    assert main(["align", str(identity_tree(tmp / "in", bad=False)), "--out", str(aligned), "--quiet"]) == 0
    cfg = {
        "data": {"kind": "imagefolder", "root": str(aligned), "train_identities": 4, "image_size": 48},
        "model": {"input_mode": "rgb+canonical+depth", "embedding_size": 16, "head": "arcface"},
        "loss": {"reco": 1.0},
        "recon": {"landmark": 1.0},
        "schedule": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 0, "log_every": 1},
        "eval": {"n_folds": 2},
        "run": {"progress": False, "tensorboard": False, "plots": False, "threads": 1, "device": "cpu"},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(tmp / "cfg.yaml"), "--out", str(tmp / "run")]) == 0
    return tmp / "run", aligned, tmp


def test_training_on_the_aligned_set_logs_a_finite_landmark_term(run):
    out, _, _ = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    assert len(train) == 3
    vals = [r["reco/landmark"] for r in train]
    assert all(math.isfinite(v) and v > 0 for v in vals), vals


def test_export_model_matches_the_runs_regressor(run, tmp_path, capsys):
    from joint.model import resize
    from joint.runs import load_run
    from recon.canonical import render_canonical

    out, aligned, _ = run
    dest = tmp_path / "export"
    assert main(["export", "--model", str(out), *map(str, PHOTOS), "--out", str(dest), "--quiet", "--threads", "1"]) == 0
    line = capsys.readouterr().out
    assert "exported 2 face(s)" in line and "reconstruction (regress):" in line and "faces/s" in line
    model, _, _ = load_run(str(out))
    trunk = model.trunk
    mm, renderer, _ = trunk._assets(torch.device("cpu"))
    for photo in PHOTOS:
        folder = dest / photo.stem
        crop = read_image(folder / "aligned.png")
        person = photo.stem.rsplit("_", 1)[0]
        assert np.array_equal(crop, read_image(aligned / person / f"{photo.stem}.png"))  # same crop as align's
        x = torch.from_numpy(crop.transpose(2, 0, 1).copy()).float()[None] / 255.0
        with torch.no_grad():
            direct = trunk.regressor(resize(x, trunk.regressor_size))
            canon112, depth112 = render_canonical(mm, renderer, direct)
            _, canon48, depth48 = trunk.canonical(x)
        got = torch.tensor(json.loads((folder / "coeffs.json").read_text())["coeffs"], dtype=torch.float32)
        assert torch.allclose(got, direct[0], atol=1e-5)
        depth = torch.from_numpy(np.load(folder / "depth.npy"))
        assert torch.allclose(depth, depth112[0, 0].clamp(0, 1), atol=1e-5)
        canon = torch.from_numpy(read_image(folder / "canonical.png").transpose(2, 0, 1).copy()).float() / 255
        assert (canon - canon112[0].clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6
        # and what the trunk feeds its backbone (48 px renders) is the same face
        assert (resize(canon[None], 48)[0] - canon48[0]).abs().mean() < 0.03
        assert (resize(depth[None, None], 48)[0] - depth48[0]).abs().mean() < 0.03


def test_refine_starts_from_the_regressor_and_lowers_the_landmark_error(run):
    from joint.commands._run_regressor import regressor_from_run
    from recon.photos import reconstruct_photos

    out, _, _ = run
    reg = regressor_from_run(str(out))
    plain = list(reconstruct_photos(PHOTOS[:1], regressor=reg))[0]
    refined = list(reconstruct_photos(PHOTOS[:1], regressor=reg, refine_steps=15))[0]
    assert plain.ok and refined.ok and set(plain.seconds) == {"detect", "regress"}
    assert "fit" in refined.seconds and len(refined.fit_history) == 15
    assert all(h["stage"] == "photo" for h in refined.fit_history)
    assert refined.nme["after"] < refined.nme["before"], refined.nme
    assert not np.allclose(plain.coeffs, refined.coeffs)


def test_visualize_model_on_a_folder(run, tmp_path, capsys):
    out, _, tmp = run
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in PHOTOS:
        Image.open(p).convert("RGB").save(photos / f"{p.stem}.png")
    (photos / "broken.png").write_bytes(b"nope")
    dest = tmp_path / "vis"
    assert main(["visualize", "--model", str(out), str(photos), "--out", str(dest), "--zoom", "1", "--no-gif",
                 "--threads", "1"]) == 0
    cap = capsys.readouterr()
    assert "reconstruction (regress):" in cap.out and "reconstruct" in cap.err  # the progress bar
    grid = Image.open(dest / "grid.png")
    assert 2 * 112 <= grid.size[1] < 3 * 112 and grid.size[0] >= 5 * 112  # two rows of five panels
    report = json.loads((dest / "report.json").read_text())
    assert len(report["processed"]) == 2 and report["skipped"][0]["path"].endswith("broken.png")


def test_model_argument_errors(run, tmp_path, capsys):
    out, _, _ = run
    photo = str(PHOTOS[0])
    assert main(["export", "--model", str(tmp_path / "nope"), photo, "--out", str(tmp_path / "e")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["export", "--refine", "3", photo, "--out", str(tmp_path / "e")]) == 2
    assert "give --model too" in capsys.readouterr().err
    assert main(["visualize", "--model", str(out), "--fit-steps", "3", photo, "--out", str(tmp_path / "v")]) == 2
    assert "use --refine" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "v").exists()
