"""`lh2face export-onnx`: onnxruntime reproduces PyTorch (max abs difference <= 1e-4) for an RGB and a
7-channel (rgb+canonical+depth) model, on random and real inputs, batch sizes 1 and 3; the regressor's
ONNX file reproduces the coefficients; the ONNX graph really takes canonical / depth as inputs."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from joint.cli import main
from helpers import PHOTOS, SIZE

TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_run_rgb, tiny_run_rgbcd):
    tmp = tmp_path_factory.mktemp("onnx")
    out = {}
    # both exporters: the legacy TorchScript one for the RGB model (fast), the default dynamo one for the
    # 7-channel model (its regressor's adaptive pooling at 48 px is beyond the TorchScript exporter)
    for key, run, exporter in (("rgb", tiny_run_rgb, "torchscript"), ("rgbcd", tiny_run_rgbcd, "dynamo")):
        path = tmp / f"{key}.onnx"
        assert main(["export-onnx", "--model", str(run), "--out", str(path), "--exporter", exporter,
                     "--threads", "1"]) == 0
        out[key] = (run, path)
    return out


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def _real_faces() -> torch.Tensor:
    """Real faces: the four LFW fixture photos, detected and aligned (dlib), at the model's input size."""
    from joint.embed import PhotoLoader

    loader = PhotoLoader(SIZE, aligned=None)
    return torch.stack([loader(p) for p in sorted(PHOTOS.glob("*.jpg"))])


def _real_images(n: int) -> torch.Tensor:
    return _real_faces()[:n].clone()


def _inputs(batch: int, real: bool, seed: int) -> torch.Tensor:
    if real:
        return _real_images(batch)
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _check(got: np.ndarray, ref: torch.Tensor) -> float:
    diff = float(np.abs(got - ref.numpy()).max())
    assert diff <= TOL, diff
    return diff


def test_io_names_and_dynamic_batch_axis(exported):
    s = _session(exported["rgb"][1])
    assert [(i.name, i.shape[1:]) for i in s.get_inputs()] == [("image", [3, SIZE, SIZE])]
    assert isinstance(s.get_inputs()[0].shape[0], str)  # symbolic: any batch size
    assert [o.name for o in s.get_outputs()] == ["embedding", "embedding_normalized"]
    s7 = _session(exported["rgbcd"][1])
    assert [(i.name, i.shape[1:]) for i in s7.get_inputs()] == [
        ("image", [3, SIZE, SIZE]), ("canonical", [3, SIZE, SIZE]), ("depth", [1, SIZE, SIZE])]
    meta = s7.get_modelmeta().custom_metadata_map
    assert meta["lh2face.input_mode"] == "rgb+canonical+depth" and meta["lh2face.image_size"] == str(SIZE)
    r = _session(Path(str(exported["rgbcd"][1]).replace(".onnx", ".regressor.onnx")))
    assert [i.name for i in r.get_inputs()] == ["image"] and [o.name for o in r.get_outputs()] == ["coeffs"]
    assert not Path(str(exported["rgb"][1]).replace(".onnx", ".regressor.onnx")).exists()  # RGB: no regressor


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("real", [False, True], ids=["random", "photos"])
def test_rgb_model_matches_torch(exported, batch, real):
    from joint.runs import load_run

    run, path = exported["rgb"]
    model, _, _ = load_run(str(run))
    x = _inputs(batch, real, seed=batch)
    z, u = _session(path).run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model.embed(x)
    _check(z, ref)
    _check(u, ref / ref.norm(dim=1, keepdim=True))
    assert z.shape == (batch, 64)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("real", [False, True], ids=["random", "photos"])
def test_seven_channel_model_and_regressor_match_torch(exported, batch, real):
    """Canonical + depth computed by torch (the run's regressor and renderer) are fed to ONNX; the
    regressor's ONNX file gives the same coefficients as torch."""
    from joint.runs import load_run

    run, path = exported["rgbcd"]
    model, _, _ = load_run(str(run))
    x = _inputs(batch, real, seed=10 + batch)
    with torch.no_grad():
        coeffs, canon, depth = model.trunk.canonical(x)
        ref = model.embed(x)
    assert float(depth.amax()) > 0.5 and float(canon.amax()) > 0.1  # a face was rendered, not empty channels
    z, u = _session(path).run(None, {"image": x.numpy(), "canonical": canon.numpy(), "depth": depth.numpy()})
    _check(z, ref)
    _check(u, ref / ref.norm(dim=1, keepdim=True))
    reg = Path(str(path).replace(".onnx", ".regressor.onnx"))
    from joint.model import resize

    # the regressor's ONNX input is the image resized to the regressor's own size (trunk.regressor_size)
    (c,) = _session(reg).run(None, {"image": resize(x, model.trunk.regressor_size).numpy()})
    _check(c, coeffs)


def test_onnx_depends_on_canonical_and_depth_inputs(exported):
    """The trap of tracing the joint model: rendered channels frozen as constants. Here other canonical /
    depth inputs must give another embedding, and the deployment path (regressor.onnx -> renderer ->
    model.onnx) must reproduce model.embed."""
    from joint.onnx_export import canonical_from_coeffs
    from joint.runs import load_run

    run, path = exported["rgbcd"]
    model, _, _ = load_run(str(run))
    s = _session(path)
    x = _real_images(2)
    with torch.no_grad():
        _, canon, depth = model.trunk.canonical(x)
        ref = model.embed(x)
    z0, _ = s.run(None, {"image": x.numpy(), "canonical": canon.numpy(), "depth": depth.numpy()})
    z1, _ = s.run(None, {"image": x.numpy(), "canonical": np.zeros_like(canon.numpy()), "depth": depth.numpy()})
    z2, _ = s.run(None, {"image": x.numpy(), "canonical": canon.numpy(), "depth": np.zeros_like(depth.numpy())})
    assert np.abs(z1 - z0).max() > 1e-2 and np.abs(z2 - z0).max() > 1e-2
    from joint.model import resize

    xr = resize(x, model.trunk.regressor_size).numpy()  # the deployment resizes to the regressor's size first
    (coeffs,) = _session(Path(str(path).replace(".onnx", ".regressor.onnx"))).run(None, {"image": xr})
    c_onnx, d_onnx = canonical_from_coeffs(coeffs, image_size=SIZE)
    z, _ = s.run(None, {"image": x.numpy(), "canonical": c_onnx, "depth": d_onnx})
    _check(z, ref)


def test_refusals_and_missing_extra(exported, tmp_path, capsys, monkeypatch):
    run, _ = exported["rgb"]
    out = tmp_path / "ts.onnx"
    assert main(["export-onnx", "--model", str(run), "--out", str(out), "--exporter", "torchscript"]) == 0
    assert "check: max |onnxruntime - torch|" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["export-onnx", "--model", str(run), "--out", str(out), "--exporter", "torchscript"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    import joint.onnx_export as ox

    real_run = ox.run_onnx
    monkeypatch.setattr(ox, "run_onnx", lambda path, feeds: {k: v + 0.1 for k, v in real_run(path, feeds).items()})
    assert main(["export-onnx", "--model", str(run), "--out", str(tmp_path / "off.onnx"), "--exporter",
                 "torchscript"]) == 1  # a graph that disagrees with torch is never written
    assert "check failed" in capsys.readouterr().err and not (tmp_path / "off.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the optional extra were not installed
    assert main(["export-onnx", "--model", str(run), "--out", str(tmp_path / "no.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install 'lh2face[onnx]'" in err
    assert not (tmp_path / "no.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ts.onnx"]  # no temporary files left behind


def test_help_documents_the_renderer_step(capsys):
    with pytest.raises(SystemExit):
        main(["export-onnx", "--help"])
    text = capsys.readouterr().out
    assert "canonical_from_coeffs" in text and "NOT in ONNX" in text and "regressor.onnx" in text
