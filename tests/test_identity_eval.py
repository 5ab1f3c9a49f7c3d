"""recon.identity_eval (pair lists, feature vectors, scores) against hand-computed values, and
bench/identity_3d.py on a tiny set of the fixture photos (fit path, untrained-regressor path, bad input)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.identity_eval import (all_pairs, balanced_pairs, centre, cosine_scores, coverage_region, image_features,
                                 identity_fraction, labels_from_paths, spread, standardise)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "photos"


def test_all_pairs_hand_example():
    i, j, same = all_pairs(["a", "a", "b"])
    assert i.tolist() == [0, 0, 1] and j.tolist() == [1, 2, 2]
    assert same.tolist() == [True, False, False]


def test_balanced_pairs_keeps_every_genuine_pair_and_as_many_impostors():
    labels = ["a", "a", "b", "b", "c"]  # genuine (0,1), (2,3); 8 impostor pairs
    i, j, same = balanced_pairs(labels, seed=3)
    assert same.sum() == 2 and (~same).sum() == 2
    assert {(a, b) for a, b, s in zip(i, j, same) if s} == {(0, 1), (2, 3)}
    assert all(labels[a] != labels[b] for a, b, s in zip(i, j, same) if not s)
    assert len({(a, b) for a, b in zip(i, j)}) == 4  # drawn without replacement
    again = balanced_pairs(labels, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((i, j, same), again))
    with pytest.raises(ValueError, match="genuine"):
        balanced_pairs(["a", "b", "c"])
    with pytest.raises(ValueError, match="impostor"):
        balanced_pairs(["a", "a"])


def test_coverage_region_and_image_features():
    masks = np.zeros((4, 1, 2, 2))
    masks[:, 0, 0, 0] = 1.0  # every face
    masks[:2, 0, 0, 1] = 1.0  # half of them
    masks[:1, 0, 1, 1] = 1.0  # a quarter
    assert coverage_region(masks, 0.5).tolist() == [[True, True], [False, False]]
    assert coverage_region(masks, 1.0).tolist() == [[True, False], [False, False]]
    images = np.arange(2 * 2 * 2 * 2, dtype=float).reshape(2, 2, 2, 2)  # (N=2, C=2, 2, 2)
    f = image_features(images, coverage_region(masks, 0.5))
    # channel-major: channel 0 pixels (0,0),(0,1), then channel 1's
    assert f.tolist() == [[0, 1, 4, 5], [8, 9, 12, 13]]
    assert image_features(images).shape == (2, 8)
    with pytest.raises(ValueError, match="empty"):
        image_features(images, np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="does not match"):
        image_features(images, np.ones((3, 3), bool))


def test_centre_standardise_cosine_hand_values():
    f = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert np.allclose(centre(f), f - [2 / 3, 1 / 3])
    s = standardise(np.array([[1.0, 3.0], [2.0, 2.0]]))
    assert np.allclose(s, [[-1.0, 1.0], [0.0, 0.0]])  # std 1 after; a constant row just centred
    scores = cosine_scores(f, np.array([0, 0, 1]), np.array([1, 2, 1]))
    assert np.allclose(scores, [1 / np.sqrt(2), 0.0, 1.0])  # a zero row scores 0
    with pytest.raises(ValueError, match="NaN"):
        cosine_scores(np.array([[np.nan, 1.0], [1.0, 1.0]]), np.array([0]), np.array([1]))


def test_spread_and_identity_fraction_hand_values():
    f = np.array([[0.0, 1.0], [2.0, 1.0], [10.0, 3.0], [12.0, 3.0]])
    # column stds (population): [sqrt(26), 1] -> mean
    assert spread(f) == pytest.approx((np.sqrt(26.0) + 1.0) / 2)
    # people {0,1} and {2,3}: means (1,1), (11,3); grand mean (6,2)
    # between = 2*(25+1) + 2*(25+1) = 104; total = 36+1 + 16+1 + 16+1 + 36+1 = 108
    assert identity_fraction(f, ["a", "a", "b", "b"]) == pytest.approx(104 / 108)
    # people {0,2} and {1,3}: means (5,2), (7,2): between = 2*1 + 2*1 = 4
    assert identity_fraction(f, ["a", "b", "a", "b"]) == pytest.approx(4 / 108)
    assert np.isnan(identity_fraction(np.ones((4, 2)), ["a", "a", "b", "b"]))
    # random features ignore identity: the fraction is about (people - 1) / (N - 1)
    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(10), 10)
    assert identity_fraction(rng.normal(size=(100, 500)), lab) == pytest.approx(9 / 99, abs=0.01)


def test_labels_from_paths():
    assert labels_from_paths(["d/s1/1.pgm", "d/s1/2.pgm", "x/Bob/Bob_1.jpg"]).tolist() == ["s1", "s1", "Bob"]


# ------------------------------------------------------------------------------------------ the script


def _script():
    spec = importlib.util.spec_from_file_location("identity_3d", ROOT / "bench" / "identity_3d.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """An ImageFolder of the fixture photos: 2 'people' x 2 photos (the grouping is arbitrary)."""
    root = tmp_path_factory.mktemp("faces")
    groups = {"p1": ["Abdullah_Gul_0001.jpg", "Hu_Jintao_0001.jpg"],
              "p2": ["Condoleezza_Rice_0001.jpg", "Jennifer_Aniston_0001.jpg"]}
    for person, files in groups.items():
        (root / person).mkdir()
        for f in files:
            shutil.copy(PHOTOS / f, root / person / f)
    return root


def test_select_photos_natural_order(tmp_path):
    mod = _script()
    for person in ("s10", "s2", "s1"):
        (tmp_path / person).mkdir()
        for k in (10, 2, 1):
            (tmp_path / person / f"{k}.pgm").write_bytes(b"")
    got = mod.select_photos(tmp_path, 2, 2)
    assert [f"{p.parent.name}/{p.name}" for p in got] == ["s1/1.pgm", "s1/2.pgm", "s2/1.pgm", "s2/2.pgm"]


def test_script_fit_path_writes_results_and_reuses_caches(tiny_set, tmp_path, capsys):
    mod = _script()
    out = tmp_path / "res.json"
    args = ["--data", f"tiny={tiny_set}", "--limit", "tiny=2x2", "--cache-dir", str(tmp_path / "cache"),
            "--variant", "quick", "--fit", "steps_pose=2", "--fit", "steps_shape=2", "--fit", "steps_photo=1",
            "--out", str(out), "--grid", str(tmp_path / "grid.png"), "--grid-size", "2x2"]
    assert mod.main(args) == 0
    res = json.loads(out.read_text())
    ver = res["sets"]["tiny"]["verification"]
    assert set(mod.FEATURES) <= set(ver)
    assert ver["_pairs"] == {"balanced": 4, "genuine": 2, "impostor": 4}
    for feat in mod.FEATURES:
        assert 0.0 <= ver[feat]["accuracy"] <= 1.0 and 0.0 <= ver[feat]["auc"] <= 1.0
    assert out.with_suffix(".md").read_text().count("| tiny |") == len(mod.FEATURES)
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (8 * 112 + 7 * 2, 2 * 112 + 2)  # 2 photos x 4 panels per row, 2 rows
    fits = tmp_path / "cache" / "fits_tiny_quick.npz"
    stamp = (tmp_path / "cache" / "landmarks_tiny.npz").stat().st_mtime_ns, fits.stat().st_mtime_ns
    assert mod.main(args) == 0  # second run: both caches reused, nothing rewritten
    assert ((tmp_path / "cache" / "landmarks_tiny.npz").stat().st_mtime_ns, fits.stat().st_mtime_ns) == stamp
    assert json.loads(out.read_text())["sets"]["tiny"]["verification"] == ver
    # the same variant name with another config is refused, not silently mixed
    assert mod.main(args[:-6] + ["--fit", "w_id=1e-5"]) == 2
    assert "another FitConfig" in capsys.readouterr().err
    # the variant table of saved results: one row per (result, set), the numbers of the JSON
    assert mod.main(["--table", str(out), "--table-features", "id,depth"]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| res | tiny |")]
    assert len(row) == 1
    pct = ["nan" if x is None else f"{100 * x:.1f}" for x in (ver["depth"]["accuracy"], ver["depth"]["tar_at_far_1e-2"])]
    assert f"{pct[0]} / {pct[1]}" in row[0]  # NaN (too few pairs here) is stored as null
    assert mod.main(["--table", str(tmp_path / "none.json")]) == 2


def test_script_untrained_regressor_carries_no_identity(tiny_set, tmp_path):
    """An untrained CoeffRegressor maps every photo to the mean face (zero-initialised output layer), so
    the coefficient features and the depth are the same for all photos and every pair scores alike:
    AUC exactly 0.5 (chance). The colour renders agree to float32 rendering noise (~1e-7)."""
    from recon.regressor import CoeffRegressor

    mod = _script()
    torch.manual_seed(0)
    path = tmp_path / "reg.pt"
    torch.save(CoeffRegressor().state_dict(), path)
    out = tmp_path / "reg.json"
    assert mod.main(["--data", f"tiny={tiny_set}", "--limit", "tiny=2x2", "--cache-dir", str(tmp_path / "cache"),
                     "--regressor", str(path), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["source"].startswith("regressor")
    ver = res["sets"]["tiny"]["verification"]
    for feat in ("id", "id_centred", "albedo", "depth"):
        assert ver[feat]["auc"] == pytest.approx(0.5), feat
    assert ver["photo"]["auc"] != pytest.approx(0.5)  # the photos themselves do differ
    reg = mod.load_regressor(str(path))
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
    coeffs = mod.regress_coefficients(reg, crops)
    assert np.array_equal(coeffs, np.repeat(coeffs[:1], 3, 0))
    assert np.allclose(coeffs[0], CoeffRegressor().layout.mean_frontal().numpy(), atol=1e-5)
    # the same weights saved as an lh2face checkpoint in float16 under "state_dict", with another width
    from lh2face.io import save_checkpoint

    small = CoeffRegressor(width=8, hidden=32)
    torch.nn.init.normal_(small.head.weight, std=1e-3)
    save_checkpoint(tmp_path / "small.pt", {"state_dict": {k: v.half() if v.is_floating_point() else v
                                                          for k, v in small.state_dict().items()}})
    loaded = mod.load_regressor(str(tmp_path / "small.pt"))
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        ref = CoeffRegressor(width=8, hidden=32)
        ref.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in small.state_dict().items()})
        assert torch.allclose(loaded(x), ref.eval()(x), atol=1e-5)


def test_script_bad_input(tmp_path, tiny_set, capsys):
    mod = _script()
    assert mod.main(["--regressor", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(3)}, tmp_path / "junk.pt")
    assert mod.main(["--regressor", str(tmp_path / "junk.pt")]) == 2
    assert "not a CoeffRegressor state dict" in capsys.readouterr().err
    assert mod.main(["--fit", "w_idd=1"]) == 2
    assert "w_idd" in capsys.readouterr().err
    assert mod.main(["--data", f"x={tmp_path / 'nope'}", "--cache-dir", str(tmp_path)]) == 2
    assert "no such data folder" in capsys.readouterr().err
