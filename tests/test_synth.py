"""recon.synth: determinism, identity consistency, landmarks vs the rendered face, value ranges, the
ImageFolder cache (resume, refusal) and the `lh2face synth` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recon.synth import SynthOptions, SyntheticFaces, cache_to_folder, cache_relpath


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Many small tensor ops per image: one intra-op thread is much faster on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ds() -> SyntheticFaces:
    return SyntheticFaces(3, 3, seed=5)


@pytest.fixture(scope="module")
def batch(ds: SyntheticFaces) -> dict:
    return ds.render_batch(range(len(ds)))


def _split(ds: SyntheticFaces, coeffs: torch.Tensor) -> dict:
    return ds.resources.layout.split(coeffs.reshape(-1, ds.resources.layout.size))


def test_item_shapes_and_ranges(ds: SyntheticFaces, batch: dict) -> None:
    item = ds[4]
    P = ds.resources.layout.size
    assert item["image"].shape == (3, 112, 112) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["coeffs"].shape == (P,) and torch.isfinite(item["coeffs"]).all()
    assert item["landmarks"].shape == (68, 2)
    assert (item["label"], item["identity"]) == (1, 1)
    assert [ds.locate(i)[0] for i in range(len(ds))] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # the image is not flat: face + background + noise
    assert float(item["image"].std()) > 0.05
    # all items' landmarks inside the crop, the face covers a sizeable part of it
    lm = batch["landmarks"]
    assert float(lm.min()) > -16 and float(lm.max()) < 128  # jaw points may leave a tight crop a little
    assert float(lm[:, 17:].min()) > 0 and float(lm[:, 17:].max()) < 112
    assert float(batch["mask"].mean(dim=(1, 2, 3)).min()) > 0.15


def test_deterministic_whatever_the_order_or_batch(ds: SyntheticFaces, batch: dict) -> None:
    again = SyntheticFaces(3, 3, seed=5)
    firsts = {i: ds[i] for i in (2, 7)}
    for i in (7, 2):  # a fresh object, another order: bit-identical items
        a = again[i]
        for key in ("image", "coeffs", "landmarks", "mask"):
            assert torch.equal(a[key], firsts[i][key]), key
        # rendered inside a batch: the same up to float rounding of the batched maths
        assert torch.equal(a["coeffs"], batch["coeffs"][i])
        assert torch.allclose(a["image"], batch["image"][i], atol=1e-5)
        assert torch.allclose(a["landmarks"], batch["landmarks"][i], atol=1e-3)
    # what a DataLoader fetches: item by item by default (exact), one batch with batched_fetch
    exact = again.__getitems__([7, 2])
    assert torch.equal(exact[0]["image"], firsts[7]["image"]) and exact[1]["label"] == 0
    fast = SyntheticFaces(3, 3, seed=5, batched_fetch=True).__getitems__([2, 7])
    assert torch.allclose(fast[1]["image"], firsts[7]["image"], atol=1e-5)
    assert fast[0]["identity"] == 0 and torch.equal(fast[1]["coeffs"], firsts[7]["coeffs"])
    other_seed = SyntheticFaces(3, 3, seed=6)[2]
    assert not torch.equal(other_seed["coeffs"], batch["coeffs"][2])


def test_dataloader_workers_give_the_same_items(ds: SyntheticFaces) -> None:
    # spawn: the renderer's numba/OpenMP threads make fork() after a render unsafe in this process
    loader = torch.utils.data.DataLoader(SyntheticFaces(3, 3, seed=5), batch_size=2, num_workers=2,
                                         shuffle=False, multiprocessing_context="spawn")
    batches = list(loader)
    got = torch.cat([b["image"] for b in batches])
    want = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(torch.cat([b["label"] for b in batches]), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))


def test_identity_consistency_and_difference(ds: SyntheticFaces, batch: dict) -> None:
    p = _split(ds, batch["coeffs"])
    for name in ("id", "albedo"):
        x = p[name].reshape(len(ds), -1)
        # same identity -> same coefficients; different identities -> different ones
        assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2]) and torch.equal(x[3], x[5])
        assert not torch.allclose(x[0], x[3]) and not torch.allclose(x[3], x[6])
    # per-image draws differ within an identity
    assert not torch.allclose(p["rotation"][0], p["rotation"][1])
    assert not torch.allclose(p["light"][0], p["light"][1])
    # a split by identity_offset reproduces the global identity exactly (same seed, same identity)
    part = SyntheticFaces(2, 3, seed=5, identity_offset=1)
    assert part.locate(0) == (0, 1, 0)
    assert torch.equal(part.sample_coeffs(1), ds.sample_coeffs(4))
    assert part[0]["label"] == 0 and part[0]["identity"] == 1


def test_sampling_statistics() -> None:
    """Known distributions: id ~ N(0,1) on the leading modes (0 after), pose uniform in the documented
    ranges, sparse expressions in [0,1]; no rendering needed."""
    o = SynthOptions(id_modes=40)
    d = SyntheticFaces(200, 2, seed=1, options=o)
    c = torch.stack([d.sample_coeffs(i) for i in range(len(d))])
    p = _split(d, c)
    ident = p["id"][::2]  # one row per identity
    assert abs(float(ident[:, :40].mean())) < 0.05
    assert abs(float(ident[:, :40].std()) - 1.0) < 0.05
    assert float(ident[:, 40:].abs().max()) == 0.0
    ang = np.degrees(p["rotation"].numpy())
    for k, lim in enumerate((o.pitch, o.yaw, o.roll)):
        assert np.abs(ang[:, k]).max() <= lim + 1e-4
        assert np.abs(ang[:, k]).max() > 0.85 * lim  # the range is used
        assert abs(ang[:, k].mean()) < 0.15 * lim
        assert abs(ang[:, k].std() - lim / np.sqrt(3)) < 0.15 * lim  # uniform: std = lim / sqrt(3)
    e = p["expr"]
    assert float(e.min()) >= 0.0 and float(e.max()) <= 1.0
    frac = float((e > 0).float().mean())
    assert 0.3 * o.expr_prob < frac < 1.2 * o.expr_prob


def test_landmarks_agree_with_the_rendered_face(ds: SyntheticFaces, batch: dict) -> None:
    """Landmarks are projected from the mesh; the mask comes from the rasteriser. Interior landmarks
    (brows, eyes, nose, mouth) fall on the face (the eye/mouth openings are filled), the jaw contour on
    or next to the silhouette."""
    from scipy.ndimage import binary_dilation

    for b in range(len(ds)):
        mask = batch["mask"][b, 0].numpy() > 0.5
        near = binary_dilation(mask, iterations=3)
        lm = batch["landmarks"][b].numpy()
        cols = np.clip(np.floor(lm[:, 0]).astype(int), 0, 111)
        rows = np.clip(np.floor(lm[:, 1]).astype(int), 0, 111)
        inner = mask[rows[17:], cols[17:]]
        assert inner.mean() >= 0.95, f"item {b}: {inner.mean():.2f} of the interior landmarks on the face"
        assert near[rows, cols].mean() >= 0.95
    # the eyes are where the 5-point alignment template puts them for a near-frontal face
    d = SyntheticFaces(1, 1, seed=0, options=SynthOptions(yaw=1, pitch=1, roll=1, shift=0.0, scale=0.0))
    item = d[0]
    eyes = torch.stack([item["landmarks"][36:42].mean(0), item["landmarks"][42:48].mean(0)])
    from recon.camera import template

    assert torch.allclose(eyes, torch.from_numpy(template(112)[:2]).float(), atol=4.0)


def test_cache_to_folder_resumes_and_refuses(tmp_path: Path) -> None:
    d = SyntheticFaces(2, 2, seed=3, identity_offset=10)
    out = tmp_path / "cache"
    cache_to_folder(d, out, chunk_size=2, progress=False)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == ["id000010/0000.png", "id000010/0001.png", "id000011/0000.png", "id000011/0001.png"]
    with np.load(out / "annotations.npz") as z:
        assert list(z["label"]) == [0, 0, 1, 1] and list(z["identity"]) == [10, 10, 11, 11]
        assert list(z["path"]) == pngs
        coeffs, lms = z["coeffs"], z["landmarks"]
    for i in range(len(d)):
        item = d[i]
        png = np.asarray(Image.open(out / cache_relpath(d, i)), dtype=np.float64) / 255.0
        ref = item["image"].permute(1, 2, 0).double().numpy()
        assert np.abs(png - ref).max() <= 0.5 / 255 + 1e-5  # the PNG is the item, quantised
        assert np.array_equal(coeffs[i], item["coeffs"].numpy())
        assert np.allclose(lms[i], item["landmarks"].numpy())
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == 4 and meta["config"]["identity_offset"] == 10

    # resume: delete one image; only its chunk is rendered again, the other chunk's files stay untouched
    keep = out / "id000011/0000.png"
    stamp = keep.stat().st_mtime_ns
    (out / "id000010/0001.png").unlink()
    cache_to_folder(d, out, chunk_size=2, progress=False)
    assert (out / "id000010/0001.png").is_file()
    assert keep.stat().st_mtime_ns == stamp

    # another data set into the same folder is refused; a foreign folder too
    with pytest.raises(FileExistsError, match="different synthetic data set"):
        cache_to_folder(SyntheticFaces(2, 2, seed=4), out, progress=False)
    # --overwrite replaces it completely: a smaller data set leaves no stale class folder behind
    cache_to_folder(SyntheticFaces(1, 1, seed=4), out, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["id000000"]
    with np.load(out / "annotations.npz") as z:
        assert list(z["path"]) == ["id000000/0000.png"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        cache_to_folder(d, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_background_crops_of_given_images(tmp_path: Path) -> None:
    """kind 'image': a crop of a user image fills the background; with a constant image and no blur or
    noise, every pixel off the face has exactly that colour."""
    bg = tmp_path / "wall.png"
    Image.new("RGB", (64, 48), (200, 30, 120)).save(bg)
    o = SynthOptions(backgrounds=("image",), blur_prob=0.0, noise_sigma=0.0)
    item = SyntheticFaces(1, 1, seed=0, options=o, background_images=[bg])[0]
    off = item["mask"][0] == 0
    assert off.float().mean() > 0.1
    px = item["image"][:, off]
    want = torch.tensor([200, 30, 120], dtype=torch.float32)[:, None] / 255
    assert torch.allclose(px, want.expand_as(px), atol=1e-6)
    with pytest.raises(ValueError, match="unknown background"):
        SyntheticFaces(1, 1, options=SynthOptions(backgrounds=("plasma",)))
    with pytest.raises(ValueError, match="needs background_images"):
        SyntheticFaces(1, 1, options=SynthOptions(backgrounds=("image",)))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_identities"):
        SyntheticFaces(0, 2)
    with pytest.raises(ValueError, match="identity_offset"):
        SyntheticFaces(2, 2, identity_offset=-1)
    with pytest.raises(IndexError):
        SyntheticFaces(2, 2).locate(4)


def test_synth_command(tmp_path: Path) -> None:
    from joint.cli import main

    out = tmp_path / "synth"
    assert main(["synth", "--identities", "2", "--images", "1", "--out", str(out), "--seed", "2", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == \
        ["id000000", "id000001"]
    # same command again: nothing to do, still fine; a different seed is refused (exit code 2)
    assert main(["synth", "--identities", "2", "--images", "1", "--out", str(out), "--seed", "2", "--quiet"]) == 0
    assert main(["synth", "--identities", "2", "--images", "1", "--out", str(out), "--seed", "3", "--quiet"]) == 2
