"""recon.export / recon.visualize and their commands: mesh and depth round trips, coeffs.json round trip
re-renders the same canonical image, refusal to overwrite, the photo report, grid / GIF geometry."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lh2face.io import to_uint8
from recon.export import (ExportExistsError, depth_to_uint16, export_coefficients, load_coeffs, mesh_bytes,
                          synthetic_identities, uint16_to_depth)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    from recon.morphable import MorphableModel

    return MorphableModel()


@pytest.fixture(scope="module")
def renderer():
    from recon.render import build_renderer

    return build_renderer("auto")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, renderer) -> tuple[Path, torch.Tensor, list[Path]]:
    out = tmp_path_factory.mktemp("export")
    coeffs = synthetic_identities(model, 2, seed=11)
    # give face 1 an expression and a pose: the mesh carries the expression, the canonical render does not
    from recon.coeffs import CoeffLayout

    p = CoeffLayout.from_model(model).split(coeffs)
    p["expr"][1, :5] = 0.6
    p["rotation"][1] = torch.tensor([0.1, 0.4, 0.0])
    folders = export_coefficients(coeffs, out, model=model, renderer=renderer, progress=False)
    return out, coeffs, folders


def test_face_folder_contents(exported) -> None:
    out, coeffs, folders = exported
    assert [f.name for f in folders] == ["face_000", "face_001"]
    for f in folders:
        assert sorted(p.name for p in f.iterdir()) == ["canonical.png", "coeffs.json", "depth.npy", "depth.png",
                                                      "mesh.obj", "mesh.ply"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left
    can = np.asarray(Image.open(folders[0] / "canonical.png"))
    assert can.shape == (112, 112, 3) and can.dtype == np.uint8
    assert can.reshape(-1, 3).max(0).min() > 60  # a lit face, not black


def test_mesh_round_trip_through_trimesh(exported, model) -> None:
    import trimesh

    _, coeffs, folders = exported
    from recon.coeffs import CoeffLayout

    p = CoeffLayout.from_model(model).split(coeffs[1:2])
    verts = model.shape(p["id"], p["expr"])[0].numpy()
    colours = model.albedo(p["albedo"])[0].numpy()
    faces = model.triangles.numpy()
    for name in ("mesh.obj", "mesh.ply"):
        m = trimesh.load(folders[1] / name, process=False)
        assert m.vertices.shape == verts.shape and np.array_equal(m.faces, faces), name
        assert np.abs(m.vertices - verts).max() < 1e-5, name  # cm; 6 decimals (OBJ) / float32 (PLY)
        rgb = np.asarray(m.visual.vertex_colors)[:, :3] / 255.0
        assert np.abs(rgb - colours).max() <= 0.5 / 255 + 1e-6, name
    # the exported mesh is the posed-free shape with the expression (differs from the neutral one)
    neutral = model.shape(p["id"], None)[0].numpy()
    assert np.abs(verts - neutral).max() > 0.1


def test_mesh_bytes_small_mesh_exact() -> None:
    import io

    import trimesh

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.5]], float)
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1]])
    c = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]])
    for kind in ("obj", "ply"):
        m = trimesh.load(io.BytesIO(mesh_bytes(v, f, c, kind)), file_type=kind, process=False)
        assert np.allclose(m.vertices, v) and np.array_equal(m.faces, f)
        assert np.array_equal(np.asarray(m.visual.vertex_colors)[:, :3], np.round(c * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="colours"):
        mesh_bytes(v, f, c[:3], "obj")


def test_depth_png_round_trip(exported) -> None:
    _, _, folders = exported
    for f in folders:
        d = np.load(f / "depth.npy")
        png = np.asarray(Image.open(f / "depth.png"))
        assert d.dtype == np.float32 and d.shape == (112, 112)
        assert png.dtype == np.uint16 or png.dtype == np.int32  # PIL reads 16-bit greyscale as I;16
        assert np.array_equal(png.astype(np.int64), np.round(d.astype(np.float64) * 65535).astype(np.int64))
        assert np.abs(uint16_to_depth(png.astype(np.uint16)) - d).max() <= 0.5 / 65535 + 1e-7
        # canonical depth: background 0, near = 1 somewhere (nose tip), a real range inside the face
        assert d.min() == 0.0 and d.max() > 0.99 and (d > 0).mean() > 0.3
    assert np.array_equal(depth_to_uint16(np.array([[0.0, 1.0, 0.5]])), np.array([[0, 65535, 32768]], np.uint16))


def test_coeffs_json_round_trip_rerenders_the_same_canonical(exported, model, renderer) -> None:
    from recon.canonical import render_canonical

    _, coeffs, folders = exported
    for i, f in enumerate(folders):
        doc = json.loads((f / "coeffs.json").read_text())
        assert doc["layout"]["id"] == [0, model.n_id] and doc["size"] == coeffs.shape[1]
        back, names = load_coeffs(f / "coeffs.json", size=coeffs.shape[1])
        assert names == [f.name]
        assert torch.equal(back[0], coeffs[i])  # float32 -> JSON -> float32 is exact
        with torch.no_grad():
            can, _ = render_canonical(model, renderer, back)
        png = np.asarray(Image.open(f / "canonical.png"))
        assert np.array_equal(to_uint8(can[0].clamp(0, 1)), png)


def test_load_coeffs_formats_and_errors(tmp_path: Path, exported) -> None:
    _, coeffs, _ = exported
    np.save(tmp_path / "c.npy", coeffs.numpy())
    np.savez(tmp_path / "c.npz", coeffs=coeffs.numpy())
    (tmp_path / "c.json").write_text(json.dumps(coeffs.tolist()))
    for name in ("c.npy", "c.npz", "c.json"):
        got, names = load_coeffs(tmp_path / name, size=coeffs.shape[1])
        assert torch.equal(got, coeffs) and names == ["face_000", "face_001"]
    with pytest.raises(ValueError, match="values"):
        load_coeffs(tmp_path / "c.npy", size=7)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coeffs(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_coeffs(tmp_path / "missing.npy")


def test_refuses_to_overwrite(exported, model, renderer) -> None:
    out, coeffs, folders = exported
    before = {p: p.read_bytes() for p in folders[0].iterdir()}
    changed = coeffs.clone()
    changed[:, 0] += 2.0
    with pytest.raises(ExportExistsError, match="--overwrite"):
        export_coefficients(changed, out, model=model, renderer=renderer, progress=False)
    assert {p: p.read_bytes() for p in folders[0].iterdir()} == before  # untouched
    # the command refuses too (exit 2) and leaves the folder as it was
    from joint.cli import main

    assert main(["export", "--coeffs", str(folders[0] / "coeffs.json"), "--out", str(out), "--quiet"]) == 2
    assert {p: p.read_bytes() for p in folders[0].iterdir()} == before


def test_overwrite_replaces(tmp_path: Path, model, renderer) -> None:
    c = synthetic_identities(model, 1, seed=1)
    export_coefficients(c, tmp_path, model=model, renderer=renderer, progress=False)
    first = (tmp_path / "face_000" / "canonical.png").read_bytes()
    c2 = synthetic_identities(model, 1, seed=2)
    export_coefficients(c2, tmp_path, model=model, renderer=renderer, overwrite=True, progress=False)
    assert (tmp_path / "face_000" / "canonical.png").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face_000"]  # no leftovers


def test_export_command_synthetic(tmp_path: Path) -> None:
    from joint.cli import main

    out = tmp_path / "syn"
    assert main(["export", "--synthetic", "2", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["synth_000000", "synth_000001"]
    # the same identities as recon.synth's data set (same seed): the identity slice matches
    from recon.synth import SyntheticFaces

    doc = json.loads((out / "synth_000001" / "coeffs.json").read_text())
    ds = SyntheticFaces(2, 1, seed=3)
    lay = ds.resources.layout
    assert np.allclose(np.asarray(doc["coeffs"])[lay.slices["id"]], ds.sample_coeffs(1)[lay.slices["id"]].numpy())
    with pytest.raises(SystemExit):  # argparse: the sources exclude each other
        main(["export", "--synthetic", "2", "--out", str(tmp_path / "x"), "--coeffs", "f.json"])
    assert main(["export", str(tmp_path / "photo.jpg"), "--synthetic", "2", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_export_photos_report(tmp_path: Path, monkeypatch, model) -> None:
    """Photo export logic with the reconstruction stubbed: failures go to report.json with their reason,
    successes get a face folder with the aligned input; exit non-zero only when nothing worked."""
    import recon.photos
    from joint.cli import main

    good = tmp_path / "in" / "good.jpg"
    bad = tmp_path / "in" / "broken.jpg"
    good.parent.mkdir()
    Image.new("RGB", (40, 40), (120, 90, 80)).save(good)
    bad.write_bytes(b"not an image")
    coeff = synthetic_identities(model, 1, seed=0)[0]

    def fake(paths, detector="dlib", model=None, renderer=None, **kw):
        for p in paths:
            if Path(p).name == "good.jpg":
                yield SimpleNamespace(path=Path(p), ok=True, reason=None, image=None, landmarks=None, coeffs=coeff,
                                      aligned=np.full((112, 112, 3), 100, np.uint8))
            else:
                yield SimpleNamespace(path=Path(p), ok=False, reason="unreadable image", image=None,
                                      landmarks=None, coeffs=None, aligned=None)

    monkeypatch.setattr(recon.photos, "reconstruct_photos", fake, raising=False)
    out = tmp_path / "out"
    assert main(["export", str(good.parent), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["path"] for r in report["processed"]] == [str(good)]
    assert report["skipped"] == [{"path": str(bad), "reason": "unreadable image"}]
    assert (out / "good" / "aligned.png").is_file() and (out / "good" / "mesh.ply").is_file()
    assert not (out / "broken").exists()
    # nothing processable -> exit 1, with the report
    out2 = tmp_path / "out2"
    assert main(["export", str(bad), "--out", str(out2), "--quiet"]) == 1
    assert json.loads((out2 / "report.json").read_text())["processed"] == []


# ------------------------------------------------------------------------------------------- visualize


def test_draw_landmarks_pixel_convention() -> None:
    from recon.visualize import draw_landmarks

    img = np.zeros((20, 30, 3), np.uint8)
    out = draw_landmarks(img, np.array([[10.5, 5.5]]), colour=(0, 255, 0), radius=0.4)
    ys, xs = np.nonzero(out[..., 1])
    assert list(zip(ys, xs)) == [(5, 10)]  # the centre of pixel (row 5, col 10) is (10.5, 5.5)
    assert img.max() == 0  # input untouched


def test_visualize_grid_and_turntable(tmp_path: Path, model, renderer) -> None:
    import imageio.v2 as imageio

    from recon.visualize import turntable_frames, visualize_faces

    coeffs = synthetic_identities(model, 2, seed=4)
    paths = visualize_faces(coeffs, tmp_path, zoom=1, gif=True, gif_frames=4, poses=True, model=model,
                            renderer=renderer)
    grid = np.asarray(Image.open(paths["grid"][0]))
    assert grid.shape == (2 * 112 + 2, 5 * 112 + 4 * 2, 3)
    frames = imageio.mimread(paths["gif"][0])
    assert len(frames) == 4 and frames[0].shape[:2] == (112, 112)
    assert np.asarray(Image.open(paths["poses"][0])).shape == (112, 5 * 112 + 4 * 2, 3)
    with pytest.raises(FileExistsError, match="overwrite"):
        visualize_faces(coeffs, tmp_path, zoom=1, gif=False, model=model, renderer=renderer)

    # turntable geometry: yaws -60, 0, +60, 0. With the alignment points kept at the template, a face
    # turned to positive yaw (nose to image right) shows the side of its head on the image left.
    fr = turntable_frames(model, renderer, coeffs[0], n_frames=4, size=112)

    def face_cx(f: np.ndarray) -> float:
        m = np.abs(f.astype(int) - 38).sum(-1) > 12  # differs from the grey background
        return float(np.nonzero(m)[1].mean())

    assert face_cx(fr[2]) < face_cx(fr[1]) < face_cx(fr[0])
    assert np.array_equal(fr[1], fr[3])  # the same yaw 0 frame on the way back


def test_overlay_draws_input_landmarks_where_they_are(model, renderer) -> None:
    from recon.visualize import face_panels

    coeffs = synthetic_identities(model, 1, seed=5)[0]
    lm = np.array([[20.25, 30.75], [90.5, 100.5]])  # crop pixels (112 px crop)
    panels = face_panels(model, renderer, coeffs, input_image=np.zeros((112, 112, 3), np.uint8),
                         input_landmarks=lm, zoom=2, captions=False)
    over = panels[1]
    red = (over[..., 0] == 255) & (over[..., 1] == 40) & (over[..., 2] == 40)
    for x, y in lm * 2:  # panel pixels: the pixel containing each scaled point is red
        assert red[int(np.floor(y)), int(np.floor(x))]
    assert red.sum() <= 2 * 9  # small dots only


def test_visualize_command_synthetic(tmp_path: Path) -> None:
    from joint.cli import main

    out = tmp_path / "vis"
    args = ["visualize", "--synthetic", "1", "--seed", "2", "--out", str(out), "--zoom", "1", "--frames", "4"]
    assert main(args) == 0
    assert (out / "grid.png").is_file() and (out / "turntable_synth_000000.gif").is_file()
    assert main(args) == 2  # refuses to overwrite
    assert main(args + ["--overwrite"]) == 0


def test_visualize_command_photos_report(tmp_path: Path, monkeypatch, model) -> None:
    """Photo path of `lh2face visualize` with the reconstruction stubbed: a grid row per good photo with
    its detected landmarks (red), failures listed in report.json, exit 1 when nothing worked."""
    import recon.photos
    from joint.cli import main

    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    for p in (good, bad):
        Image.new("RGB", (30, 30)).save(p)
    coeff = synthetic_identities(model, 1, seed=2)[0]
    lm = np.tile(np.array([[56.5, 60.5]]), (68, 1))

    def fake(paths, detector="dlib", model=None, renderer=None, **kw):
        for p in paths:
            ok = Path(p) == good
            yield SimpleNamespace(path=Path(p), ok=ok, reason="" if ok else "no face found",
                                  coeffs=coeff if ok else None, landmarks=lm if ok else None,
                                  aligned=np.full((112, 112, 3), 90, np.uint8) if ok else None)

    monkeypatch.setattr(recon.photos, "reconstruct_photos", fake, raising=False)
    out = tmp_path / "vis"
    assert main(["visualize", str(good), str(bad), "--out", str(out), "--zoom", "1", "--no-gif"]) == 0
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (112, 5 * 112 + 8, 3)
    overlay = grid[:, 114:226]
    assert tuple(overlay[60, 56]) == (255, 40, 40)  # the detected landmark, at its pixel
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == [{"path": str(bad), "reason": "no face found"}]
    assert main(["visualize", str(bad), "--out", str(tmp_path / "none"), "--zoom", "1", "--no-gif"]) == 1
