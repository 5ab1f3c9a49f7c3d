"""`lh2face align` (recon.align_photos) and the landmark sidecar read by recognition.data / joint.data.

Truths used: the crop is re-made exactly by warping the source with the stored matrix; dlib run again on the
crop itself finds the stored landmarks; the 5 points land on the ArcFace template; crops from a landmark
cache equal crops from detection; the data set's landmarks are the sidecar's scaled to the output size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from joint.cli import main
from lh2face.align import ARCFACE_TEMPLATE, warp_affine
from lh2face.io import read_image
from lh2face.landmark_sidecar import SidecarError, load_sidecar

from helpers import PHOTOS, identity_tree

LFW_DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lfw-dev"

pytest.importorskip("dlib", reason="the dlib landmark backend (dlib-bin) is not installed")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("align")
    src = identity_tree(tmp / "in")
    out = tmp / "out"
    assert main(["align", str(src), "--out", str(out), "--threads", "1", "--quiet"]) == 0
    return src, out


def crop_files(out: Path) -> list:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))


def test_align_writes_identity_folders_sidecar_and_report(aligned, capsys):
    src, out = aligned
    people = sorted(p.name for p in src.iterdir())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == people
    files = crop_files(out)
    assert len(files) == 12  # 6 photos + 6 mirrors, the two bad files left out
    side = load_sidecar(out / "landmarks.npz")
    assert side.size == 112 and sorted(side.rows) == files
    for f in files:
        assert Image.open(out / f).size == (112, 112)
    report = json.loads((out / "report.json").read_text())
    assert report["aligned"] == 12 and report["crops"] == 12 and report["failed_count"] == 2
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert reasons["corrupt.jpg"].startswith("unreadable:") and "corrupt.jpg" in reasons["corrupt.jpg"]
    assert reasons["grey.png"].startswith("no face found")
    assert report["failure_counts"] == {"unreadable": 1, "no face found": 1}


def test_crop_is_the_source_warped_by_the_stored_matrix(aligned):
    src, out = aligned
    side = load_sidecar(out / "landmarks.npz")
    for name in list(side.rows)[:3]:
        row = side.rows[name]
        remade = warp_affine(read_image(row.source), row.matrix, (112, 112))
        assert np.array_equal(remade, read_image(out / name))


def test_stored_landmarks_agree_with_detection_on_the_crop_and_the_template(aligned):
    from recon.detect_align import LazyDetector
    from recon.landmarks import inter_ocular

    _, out = aligned
    side = load_sidecar(out / "landmarks.npz")
    det = LazyDetector("dlib").get()  # the process's dlib detector (loaded once)
    errs, tmpl = [], []
    for name, row in side.rows.items():
        faces = det(read_image(out / name))
        assert faces, f"dlib finds no face in the crop {name}"
        face = max(faces, key=lambda f: f.area)
        errs.append(np.linalg.norm(face.landmarks68 - row.landmarks68, axis=1).mean() / inter_ocular(row.landmarks68))
        tmpl.append(np.linalg.norm(row.landmarks5 - ARCFACE_TEMPLATE, axis=1).mean())
    assert np.median(errs) < 0.05, errs  # NME of a re-detection on the crop itself
    assert max(tmpl) < 6.0, tmpl  # pixels: the least-squares similarity puts the 5 points on the template


def test_rerun_skips_done_photos_and_resumes_a_lost_row(aligned, tmp_path, capsys):
    src, out0 = aligned
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    before = {f: (out / f).stat().st_mtime_ns for f in crop_files(out)}
    assert main(["align", str(src), "--out", str(out), "--threads", "1", "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "aligned 0 photo(s)" in line and "12 already done" in line and "2 failed" in line
    assert {f: (out / f).stat().st_mtime_ns for f in crop_files(out)} == before
    # a run stopped before its last sidecar save: the row is missing, the photo is done again
    side = load_sidecar(out / "landmarks.npz")
    lost = sorted(side.rows)[0]
    del side.rows[lost]
    side.save(out / "landmarks.npz")
    assert main(["align", str(src), "--out", str(out), "--threads", "1", "--quiet"]) == 0
    assert "aligned 1 photo(s)" in capsys.readouterr().out
    again = load_sidecar(out / "landmarks.npz")
    assert sorted(again.rows) == sorted(load_sidecar(out0 / "landmarks.npz").rows)
    assert np.allclose(again.rows[lost].landmarks68, load_sidecar(out0 / "landmarks.npz").rows[lost].landmarks68)


def test_faces_all_names_every_face(tmp_path):
    a = Image.open(PHOTOS / "Hu_Jintao_0001.jpg").convert("RGB")
    b = Image.open(PHOTOS / "Condoleezza_Rice_0001.jpg").convert("RGB").resize((200, 200))
    two = Image.new("RGB", (460, 260), (40, 40, 40))
    two.paste(a, (0, 0))
    two.paste(b, (255, 30))
    (tmp_path / "in" / "pair").mkdir(parents=True)
    two.save(tmp_path / "in" / "pair" / "two.png")
    assert main(["align", str(tmp_path / "in"), "--out", str(tmp_path / "all"), "--faces", "all", "--quiet"]) == 0
    assert main(["align", str(tmp_path / "in"), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    assert crop_files(tmp_path / "all") == ["pair/two_0.png", "pair/two_1.png"]
    assert crop_files(tmp_path / "one") == ["pair/two.png"]
    side = load_sidecar(tmp_path / "all" / "landmarks.npz")
    # face 0 is the larger one (Hu Jintao, on the left): its crop equals the single-face run's crop
    assert np.array_equal(read_image(tmp_path / "all" / "pair/two_0.png"), read_image(tmp_path / "one" / "pair/two.png"))
    assert side.rows["pair/two_0.png"].matrix[0, 2] != side.rows["pair/two_1.png"].matrix[0, 2]
    assert [side.rows[f].face_index for f in ("pair/two_0.png", "pair/two_1.png")] == [0, 1]


def test_landmark_cache_gives_the_same_crops(aligned, tmp_path, capsys):
    src, out0 = aligned
    cache = tmp_path / "cache.npz"
    assert main(["landmarks", str(src), "--out", str(cache), "--quiet"]) == 0
    out = tmp_path / "from_cache"
    assert main(["align", "--landmarks", str(cache), "--out", str(out), "--quiet"]) == 0
    assert crop_files(out) == crop_files(out0)
    for f in crop_files(out):
        assert np.array_equal(read_image(out / f), read_image(out0 / f))
    report = json.loads((out / "report.json").read_text())
    assert report["detector"] == "cache:cache.npz" and report["failure_counts"] == {"unreadable": 1, "no face found": 1}
    # a photo that the cache does not hold is reported, not detected
    extra = tmp_path / "extra" / "someone"
    extra.mkdir(parents=True)
    shutil.copy(PHOTOS / "Hu_Jintao_0001.jpg", extra / "x.jpg")
    assert main(["align", str(extra), "--landmarks", str(cache), "--out", str(tmp_path / "o2"), "--quiet"]) == 1
    assert "not in the landmark cache" in json.loads((tmp_path / "o2" / "report.json").read_text())["failed"][0]["reason"]


def test_bad_arguments_are_one_line_errors(aligned, tmp_path, capsys):
    src, out = aligned
    assert main(["align", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "no such file" in err
    assert main(["align", str(src), "--out", str(out), "--size", "96", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--size 112" in err and "landmarks.npz" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not LFW_DEV.is_dir(), reason="../shared/data/lfw-dev is not on this machine")
def test_align_lfw_dev_people_with_bad_files(tmp_path, capsys):
    src = tmp_path / "lfw"
    for person in sorted(p for p in LFW_DEV.iterdir() if p.is_dir())[:3]:
        (src / person.name).mkdir(parents=True)
        for f in sorted(person.iterdir())[:3]:
            shutil.copy(f, src / person.name / f.name)
    (src / "broken").mkdir()
    (src / "broken" / "half.jpg").write_bytes((LFW_DEV / person.name / f.name).read_bytes()[:300])
    Image.new("RGB", (250, 250), (128, 128, 128)).save(src / "broken" / "grey.png")
    out = tmp_path / "aligned"
    assert main(["align", str(src), "--out", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "aligned 9 photo(s) into 9 crop(s)" in line and "2 failed (1 no face found, 1 unreadable)" in line
    side = load_sidecar(out / "landmarks.npz")
    assert len(side) == 9 and all(np.isfinite(r.score) for r in side.rows.values())
    assert not (out / "broken").exists()


# ------------------------------------------------------------------------------- the data set side


def test_image_folder_returns_sidecar_landmarks_scaled(aligned):
    from recognition.data import ImageFolderDataset

    _, out = aligned
    side = load_sidecar(out / "landmarks.npz")
    plain = ImageFolderDataset(out, image_size=48)
    assert len(plain[0]) == 2  # landmarks are opt-in
    ds = ImageFolderDataset(out, image_size=48, landmarks="auto")
    assert ds.sidecar is not None and len(ds) == 12
    for i in (0, 5, 11):
        image, label, lm = ds[i]
        rel = Path(ds.samples[i][0]).relative_to(out).as_posix()
        assert image.shape == (3, 48, 48) and lm.shape == (68, 2) and lm.dtype == torch.float32
        assert torch.allclose(lm, torch.from_numpy(side.rows[rel].landmarks68) * (48 / 112))
    native = ImageFolderDataset(out, image_size=None, landmarks=True)
    assert torch.allclose(native[3][2], torch.from_numpy(side.rows[Path(native.samples[3][0]).relative_to(out).as_posix()].landmarks68))


def test_joint_data_carries_landmarks_into_batches(aligned):
    from joint.config import DataConfig, EvalConfig
    from joint.data import build_data, collate_samples

    _, out = aligned
    data = build_data(DataConfig(kind="imagefolder", root=str(out), image_size=64), EvalConfig(), need_eval=False)
    batch = collate_samples([data.train[i] for i in range(4)])
    assert batch["landmarks"].shape == (4, 68, 2)
    side = load_sidecar(out / "landmarks.npz")
    rel = Path(data.train.base.samples[0][0]).relative_to(out).as_posix()
    assert torch.allclose(batch["landmarks"][0], torch.from_numpy(side.rows[rel].landmarks68) * (64 / 112))


def _broken_copy(aligned, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(aligned[1], out)
    return out


def test_sidecar_missing_row_is_one_error_naming_the_image(aligned, tmp_path):
    from joint.config import DataConfig, EvalConfig
    from joint.data import build_data
    from lh2face.config import ConfigError
    from recognition.data import ImageFolderDataset

    out = _broken_copy(aligned, tmp_path)
    side = load_sidecar(out / "landmarks.npz")
    gone = sorted(side.rows)[4]
    del side.rows[gone]
    side.save(out / "landmarks.npz")
    with pytest.raises(SidecarError, match=f"no row for image {gone}"):
        ImageFolderDataset(out, landmarks=True)
    with pytest.raises(ConfigError, match="landmarks.npz: no row for image"):
        build_data(DataConfig(kind="imagefolder", root=str(out)), EvalConfig(), need_eval=False)


def test_sidecar_wrong_shape_nan_and_image_size_are_errors(aligned, tmp_path):
    from recognition.data import ImageFolderDataset

    out = _broken_copy(aligned, tmp_path)
    with np.load(out / "landmarks.npz") as z:
        arrays = {k: z[k] for k in z.files}
    bad = dict(arrays, landmarks68=arrays["landmarks68"][:, :67])
    np.savez(out / "landmarks.npz", **bad)
    with pytest.raises(SidecarError, match=r"'landmarks68' has shape \(12, 67, 2\), expected \(12, 68, 2\)"):
        ImageFolderDataset(out, landmarks=True)
    lm = arrays["landmarks68"].copy()
    lm[7, 3, 0] = np.nan
    np.savez(out / "landmarks.npz", **dict(arrays, landmarks68=lm))
    with pytest.raises(SidecarError, match=f"row 7 \\({arrays['files'][7]}\\).*NaN"):
        ImageFolderDataset(out, landmarks=True)
    np.savez(out / "landmarks.npz", **arrays)
    victim = out / str(arrays["files"][2])
    Image.open(victim).resize((100, 100)).save(victim)
    ds = ImageFolderDataset(out, landmarks=True)
    k = [Path(p).relative_to(out).as_posix() for p, _ in ds.samples].index(str(arrays["files"][2]))
    with pytest.raises(SidecarError, match="100x100 but its landmarks refer to a 112x112 crop"):
        ds[k]
    (out / "landmarks.npz").write_bytes(b"not an npz")
    with pytest.raises(SidecarError, match="unreadable landmark sidecar"):
        ImageFolderDataset(out, landmarks="auto")


def test_the_same_photo_given_twice_is_aligned_once(tmp_path, capsys):
    person = tmp_path / "in" / "Hu"
    person.mkdir(parents=True)
    shutil.copy(PHOTOS / "Hu_Jintao_0001.jpg", person / "a.jpg")
    assert main(["align", str(tmp_path / "in"), str(person / "a.jpg"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "aligned 1 photo(s) into 1 crop(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "report.json").read_text())["photos"] == 1
    assert crop_files(tmp_path / "o") == ["Hu/a.png"]


def test_align_embed_and_photos_share_one_detection_path(aligned, tmp_path):
    """The crop `lh2face align` wrote, the crop recon.photos (export / visualize) makes and the crop
    `lh2face embed` embeds for the same raw photo are the same pixels; the dlib model is loaded once."""
    from joint.embed import PhotoLoader
    from recon.detect_align import LazyDetector
    from recon.photos import reconstruct_photos

    src, out = aligned
    photo = src / "Hu_Jintao" / "Hu_Jintao_0001.png"
    written = read_image(out / "Hu_Jintao" / "Hu_Jintao_0001.png")
    res = next(reconstruct_photos([photo], fit_steps=0))
    assert np.array_equal(res.aligned, written)
    loader = PhotoLoader(112, aligned=False)
    from_embed = loader(photo)
    assert torch.equal(from_embed, torch.from_numpy(written).permute(2, 0, 1).float() / 255.0)
    assert loader.detector.get() is LazyDetector("dlib").get()  # built once per process


def test_detect_and_align_orders_faces_and_names_each_failure(tmp_path):
    """recon.detect_align: faces largest first (ties keep the detector's order), and the reasons the batch
    commands list; a detector that cannot run at all is not a per-photo failure."""
    from recon.detect_align import (DetectorFailed, LazyDetector, NoFaceError, UnreadablePhoto, detect_and_align,
                                    read_photo)
    from recon.landmarks import DetectorUnavailable, Face

    image = read_photo(PHOTOS / "Hu_Jintao_0001.jpg")
    real = LazyDetector("dlib").get()(image)[0]
    small = Face(box=[10, 10, 30, 30], score=2.0, landmarks68=real.landmarks68 * 0.2 + 10)
    twin = Face(box=real.box, score=0.5, landmarks68=real.landmarks68 + 1.0)  # same area, detected later
    got = detect_and_align(image, lambda im: [small, real, twin], size=96, faces="all")
    assert got.num_detected == 3 and [a.face for a in got.faces] == [real, twin, small]
    assert all(a.crop.shape == (96, 96, 3) and a.landmarks68.shape == (68, 2) for a in got.faces)
    one = detect_and_align(image, lambda im: [small, real, twin], size=96)
    assert [a.face for a in one.faces] == [real] and np.array_equal(one.faces[0].crop, got.faces[0].crop)
    with pytest.raises(NoFaceError, match="^no face found$"):
        detect_and_align(image, lambda im: [])

    def crash(im):
        raise RuntimeError("crashed")

    def missing(im):
        raise DetectorUnavailable("install dlib-bin")

    with pytest.raises(DetectorFailed, match="^detector failed: RuntimeError: crashed$"):
        detect_and_align(image, crash)
    with pytest.raises(DetectorUnavailable):
        detect_and_align(image, missing)
    with pytest.raises(UnreadablePhoto, match="^unreadable: .*nope.jpg"):
        read_photo(tmp_path / "nope.jpg")
