"""`lh2face embed`: photos -> embeddings, norms, paths (aligned crops, raw photos, 7-channel models, bad files).

The reference embeddings are computed here from independently decoded pixels (PIL) through the model's
own forward pass; the raw-photo path is checked against the aligned crops recon.photos produces.
The tiny trained runs come from tests/conftest.py (one per session, shared with test_onnx / test_init_from).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from joint.cli import main
from helpers import PHOTOS, SIZE, pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tiny_run_rgb, tiny_run_rgbcd):
    """The session's tiny runs (tests/conftest.py) and the folder holding their training faces."""
    return {"rgb": tiny_run_rgb, "rgbcd": tiny_run_rgbcd, "tmp": tiny_run_rgb.parent}


def _unit(z: torch.Tensor) -> np.ndarray:
    return (z / z.norm(dim=1, keepdim=True)).numpy()


def test_aligned_crops_match_the_models_forward_pass(runs, tmp_path, capsys):
    from joint.runs import load_run

    files = sorted((runs["tmp"] / "faces").rglob("*.png"))
    out = tmp_path / "emb.npz"
    assert main(["embed", "--model", str(runs["rgb"]), str(runs["tmp"] / "faces"), "--aligned", "--out", str(out),
                 "--batch-size", "4", "--threads", "1", "--quiet"]) == 0
    assert "embedded 15 of 15 photos" in capsys.readouterr().out
    d = np.load(out)
    assert list(d["paths"]) == [str(p) for p in files]  # input order, batches of 4 stitched back
    assert d["embeddings"].shape == (15, 64) and d["embeddings"].dtype == np.float32
    assert d["norms"].shape == (15,) and d["failed"].shape == (0,)
    model, _, _ = load_run(str(runs["rgb"]))
    with torch.no_grad():
        z = model.backbone(torch.stack([pixels(p) for p in files]))
    np.testing.assert_allclose(d["embeddings"], _unit(z), atol=1e-5)
    np.testing.assert_allclose(d["norms"], z.norm(dim=1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(d["embeddings"], axis=1), 1.0, atol=1e-6)


def test_seven_channel_model_uses_its_regressor_and_flip(runs, tmp_path):
    """7 channels: image + canonical + depth rendered from the run's regressor, with flip-test summed."""
    from joint.runs import load_run

    files = sorted((runs["tmp"] / "faces" / "p1").glob("*.png"))
    out = tmp_path / "emb7.npz"
    assert main(["embed", "--model", str(runs["rgbcd"]), *map(str, files), "--aligned", "--flip", "--out", str(out),
                 "--threads", "1", "--quiet"]) == 0
    d = np.load(out)
    assert bool(d["flip"]) is True
    model, _, _ = load_run(str(runs["rgbcd"]))
    x = torch.stack([pixels(p) for p in files])

    def seven(images):
        coeffs = model.trunk.regress(images)  # resized to the regressor's own input size
        from recon import CoeffLayout, MorphableModel
        from recon.canonical import render_canonical
        from recon.render import build_renderer

        mm = MorphableModel()
        canon, depth = render_canonical(mm, build_renderer(), coeffs, image_size=SIZE, layout=CoeffLayout.from_model(mm))
        assert canon.shape == (len(files), 3, SIZE, SIZE) and depth.shape == (len(files), 1, SIZE, SIZE)
        return model.backbone(torch.cat([images, canon, depth], 1))

    with torch.no_grad():
        z = seven(x) + seven(torch.flip(x, dims=(3,)))
    np.testing.assert_allclose(d["embeddings"], _unit(z), atol=1e-5)
    np.testing.assert_allclose(d["norms"], z.norm(dim=1).numpy(), rtol=1e-5)


def test_raw_photos_are_detected_and_aligned_like_recon_photos(runs, tmp_path):
    """A raw LFW photo (250x250) goes through dlib + ArcFace alignment: same embedding as the aligned crop
    recon.photos.reconstruct_photos makes, embedded as an aligned 112x112 crop."""
    from recon.photos import reconstruct_photos

    photo = PHOTOS / "Hu_Jintao_0001.jpg"
    crop = next(reconstruct_photos([photo], fit_steps=0)).aligned
    Image.fromarray(crop).save(tmp_path / "crop.png")
    assert main(["embed", "--model", str(runs["rgb"]), str(photo), "--out", str(tmp_path / "raw.npz"),
                 "--threads", "1", "--quiet"]) == 0  # auto: 250x250 is not a crop size -> raw
    assert main(["embed", "--model", str(runs["rgb"]), str(tmp_path / "crop.png"), "--out", str(tmp_path / "crop.npz"),
                 "--threads", "1", "--quiet"]) == 0  # auto: 112x112 -> aligned crop
    raw, ref = np.load(tmp_path / "raw.npz"), np.load(tmp_path / "crop.npz")
    np.testing.assert_allclose(raw["embeddings"], ref["embeddings"], atol=1e-6)
    np.testing.assert_allclose(raw["norms"], ref["norms"], rtol=1e-6)
    # --aligned on the raw photo skips detection: a squashed full photo, a different embedding
    assert main(["embed", "--model", str(runs["rgb"]), str(photo), "--aligned", "--out", str(tmp_path / "sq.npz"),
                 "--threads", "1", "--quiet"]) == 0
    assert np.abs(np.load(tmp_path / "sq.npz")["embeddings"] - ref["embeddings"]).max() > 1e-3


def test_bad_files_are_listed_not_fatal_and_npy_format(runs, tmp_path, capsys):
    good = sorted((runs["tmp"] / "faces" / "p2").glob("*.png"))[:2]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    noface = tmp_path / "grey.png"
    Image.new("RGB", (200, 160), (128, 128, 128)).save(noface)
    missing = tmp_path / "missing.jpg"
    args = [str(good[0]), str(corrupt), str(noface), str(missing), str(good[1])]
    out = tmp_path / "emb.npy"
    assert main(["embed", "--model", str(runs["rgb"]), *args, "--out", str(out), "--threads", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    for bad in (corrupt, noface, missing):
        assert f"skipped {bad}:" in err
    assert "no face found" in err
    emb = np.load(out)
    assert emb.shape == (2, 64) and emb.dtype == np.float32
    assert (tmp_path / "emb.txt").read_text().splitlines() == [str(good[0]), str(good[1])]
    assert np.load(tmp_path / "emb.norms.npy").shape == (2,)
    failed = [line.split("\t") for line in (tmp_path / "emb.failed.txt").read_text().splitlines()]
    assert [f[0] for f in failed] == [str(corrupt), str(noface), str(missing)]
    assert failed[1][1] == "no face found" and "unreadable" in failed[0][1] and "unreadable" in failed[2][1]
    # same photos as .npz: the same numbers, the failures listed inside
    assert main(["embed", "--model", str(runs["rgb"]), *args, "--out", str(tmp_path / "e.npz"), "--threads", "1",
                 "--quiet"]) == 0
    d = np.load(tmp_path / "e.npz")
    np.testing.assert_array_equal(d["embeddings"], emb)
    assert list(d["failed"]) == [str(corrupt), str(noface), str(missing)] and len(d["failed_reasons"]) == 3


def test_all_bad_is_an_error_and_outputs_are_not_replaced(runs, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "emb.npz"
    assert main(["embed", "--model", str(runs["rgb"]), str(corrupt), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"skipped {corrupt}" in err and "none of the 1 photos could be embedded" in err
    assert not out.exists() and not list(tmp_path.glob(".emb.npz*"))  # nothing half-written
    good = str(sorted((runs["tmp"] / "faces" / "p0").glob("*.png"))[0])
    out.write_bytes(b"precious")
    assert main(["embed", "--model", str(runs["rgb"]), good, "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main(["embed", "--model", str(runs["rgb"]), good, "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert np.load(out)["embeddings"].shape == (1, 64)
    assert main(["embed", "--model", str(tmp_path / "no_run"), good, "--out", str(tmp_path / "x.npz")]) == 2
    assert "--model" in capsys.readouterr().err
