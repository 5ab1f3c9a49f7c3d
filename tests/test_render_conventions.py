"""Pixel-centre, axis-direction and depth-sign conventions, shared by every importable renderer backend.

Truth is the convention itself (DESIGN.md section 5): camera space OpenCV (x right, y down, z forward,
cm); u = fx x/z + cx, v = fy y/z + cy; the centre of pixel (row i, col j) is (j + 0.5, i + 0.5);
depth is camera z. Every case below is decided by a pixel centre that lies well inside or well
outside a triangle, so all correct rasterisers must agree exactly.
"""

from __future__ import annotations

import pytest
import torch

from recon.render import build_renderer, pytorch3d_available

_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
BACKENDS = [
    pytest.param(("torch", {"impl": "numba"}, "cpu"), id="torch-numba"),
    pytest.param(("torch", {"impl": "torch"}, "cpu"), id="torch-vectorised"),
    pytest.param(("torch", {"impl": "torch"}, "cuda"), id="torch-vectorised-cuda", marks=_CUDA),
    pytest.param(("pytorch3d", {}, "cpu"), id="pytorch3d"),
    pytest.param(("pytorch3d", {}, "cuda"), id="pytorch3d-cuda", marks=_CUDA),
]


class _OnDevice:
    """Calls a renderer with its tensor arguments moved to ``device``; outputs come back on CPU."""

    def __init__(self, renderer, device: str) -> None:
        self.renderer, self.device = renderer, device

    def __call__(self, vertices, triangles, attributes, image_size, K):
        d = self.device
        out = self.renderer(vertices.to(d), triangles.to(d), attributes.to(d), image_size, K.to(d))
        for name in ("image", "mask", "depth"):
            setattr(out, name, getattr(out, name).cpu())
        return out


@pytest.fixture(params=BACKENDS)
def renderer(request):
    name, opts, device = request.param
    if name == "pytorch3d":
        pytest.importorskip("pytorch3d")
    return _OnDevice(build_renderer(name, **opts), device)


def _K(f: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def _unproject(uv, z, K):
    """Pixel coordinates (N,2) at depth z -> camera points (N,3)."""
    uv = torch.as_tensor(uv, dtype=torch.float32)
    x = (uv[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (uv[:, 1] - K[1, 2]) / K[1, 1] * z
    return torch.stack([x, y, torch.full_like(x, z)], dim=-1)


def _small_triangle(u, v, z, K, r=0.3):
    """Camera-space triangle whose projection is a small CCW (as displayed) triangle around (u, v)."""
    # counter-clockwise as displayed (u right, v down): negative signed area
    uv = [(u - r, v + r), (u + r, v + r), (u, v - r)]
    return _unproject(uv, z, K)


@pytest.mark.parametrize("hw", [(7, 9), (8, 8)])
def test_pixel_centre_and_axes(renderer, hw):
    """A triangle of radius 0.3 px around (j+0.5, i+0.5) covers exactly pixel (row i, col j)."""
    h, w = hw
    K = _K(10.0, w / 2.0, h / 2.0)
    for i, j in [(0, 0), (1, w - 2), (h - 1, 2), (h // 2, w // 2)]:
        verts = _small_triangle(j + 0.5, i + 0.5, 20.0, K)[None]
        tri = torch.tensor([[0, 1, 2]])
        out = renderer(verts, tri, torch.ones(1, 3, 1), (h, w), K)
        assert out.mask.shape == (1, 1, h, w) and out.image.shape == (1, 1, h, w)
        covered = (out.mask[0, 0] > 0.5).nonzero().tolist()
        assert covered == [[i, j]], f"centre ({j + 0.5}, {i + 0.5}) should light only pixel {(i, j)}"
        assert out.depth[0, 0, i, j].item() == pytest.approx(20.0, rel=1e-5)


def test_axis_directions(renderer):
    """+x camera lands right of the principal point, +y camera (down) lands below it."""
    h = w = 16
    K = _K(20.0, w / 2.0, h / 2.0)
    tri = torch.tensor([[0, 1, 2]])
    z = 10.0
    # x = +2 cm at z = 10 -> u = 20 * 0.2 + 8 = 12 (column 11 or 12); y = +2 -> v = 12 (row 11 / 12)
    p = torch.tensor([[2.0, 2.0, z]])
    u = K[0, 0] * p[0, 0] / z + K[0, 2]
    v = K[1, 1] * p[0, 1] / z + K[1, 2]
    verts = _small_triangle(float(u) - 0.5, float(v) - 0.5, z, K)[None]  # centre of pixel (11, 11)
    out = renderer(verts, tri, torch.ones(1, 3, 1), (h, w), K)
    covered = (out.mask[0, 0] > 0.5).nonzero().tolist()
    assert covered == [[11, 11]]
    # mirrored in y only: above the centre line
    verts_up = verts * torch.tensor([1.0, -1.0, 1.0])
    out = renderer(verts_up, tri, torch.ones(1, 3, 1), (h, w), K)
    rows = (out.mask[0, 0] > 0.5).nonzero()[:, 0]
    cols = (out.mask[0, 0] > 0.5).nonzero()[:, 1]
    assert rows.tolist() == [4] and cols.tolist() == [11]


def test_depth_sign_and_nearest_wins(renderer):
    """Depth is positive camera z; of two overlapping quads the nearer one is visible."""
    h, w = 10, 12
    K = _K(12.0, w / 2.0, h / 2.0)
    quads = []
    cols = []
    for z, c in ((60.0, 1.0), (30.0, 2.0)):  # far first, so painter's order would be wrong
        corners = _unproject([(1.0, 1.0), (11.0, 1.0), (11.0, 9.0), (1.0, 9.0)], z, K)
        quads.append(corners)
        cols += [c] * 4
    verts = torch.cat(quads)[None]
    # counter-clockwise as displayed: (0, 3, 2), (0, 2, 1) for corners TL, TR, BR, BL
    tri = torch.tensor([[0, 3, 2], [0, 2, 1], [4, 7, 6], [4, 6, 5]])
    attrs = torch.tensor(cols).view(1, 8, 1)
    out = renderer(verts, tri, attrs, (h, w), K)
    inside = out.mask[0, 0] > 0.5
    assert inside.sum().item() == 10 * 8
    assert torch.allclose(out.depth[0, 0][inside], torch.tensor(30.0))
    assert torch.allclose(out.image[0, 0][inside], torch.tensor(2.0))
    assert (out.depth[0, 0][~inside] == 0).all() and (out.image[0, 0][~inside] == 0).all()


def test_missing_pytorch3d_error_names_environment():
    if pytorch3d_available():
        pytest.skip("pytorch3d is installed: the missing-backend error cannot occur")
    with pytest.raises(ImportError) as err:
        build_renderer("pytorch3d")
    msg = str(err.value)
    assert "environment.yml" in msg and "conda env create -f environment.yml" in msg
    # auto falls back to the project's own backend
    assert build_renderer("auto").name == "torch"


def _soft_renderer(request_param, sigma: float):
    name, opts, device = request_param
    if name == "pytorch3d":
        pytest.importorskip("pytorch3d")
    return _OnDevice(build_renderer(name, soft_edges=sigma, **opts), device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_rim_uses_the_triangle_nearest_to_the_pixel_not_nearest_in_z(backend):
    """Pixel centre (row 8, col 8) is uncovered. One far triangle (z = 40) has its nearest point 1 px from
    it; six near triangles (z = 10, more than PyTorch3D's faces_per_pixel) lie 3 px away. The soft mask
    there must be rim_profile(1 px), whatever the depths (the definition of Renderer.soft_mask)."""
    from recon.render.interpolate import rim_profile

    sigma = 1.0
    h = w = 17
    K = _K(20.0, w / 2.0, h / 2.0)
    px, py = 8.5, 8.5
    tris_uv = [[(px + 1.0, py - 2.0), (px + 1.0, py + 2.0), (px + 3.0, py)]]  # edge x = px + 1: 1 px away
    zs = [40.0]
    for k in range(6):  # a fan left of the pixel, edge x = px - 3
        y0 = py - 3.0 + k
        tris_uv.append([(px - 3.0, y0), (px - 3.0, y0 + 1.0), (px - 5.0, y0 + 0.5)])
        zs.append(10.0)
    verts, tris = [], []
    for t, (uv, z) in enumerate(zip(tris_uv, zs)):
        # order the corners counter-clockwise as displayed (negative signed area)
        (u0, v0), (u1, v1), (u2, v2) = uv
        if (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0) > 0:
            uv = [uv[0], uv[2], uv[1]]
        verts.append(_unproject(uv, z, K))
        tris.append([3 * t, 3 * t + 1, 3 * t + 2])
    verts = torch.cat(verts)[None]
    tri = torch.tensor(tris)
    r = _soft_renderer(backend, sigma)
    out = r(verts, tri, torch.ones(1, verts.shape[1], 1), (h, w), K)
    assert out.mask[0, 0, 8, 8].item() < 1.0  # uncovered
    expected = rim_profile(torch.tensor(1.0, dtype=torch.float64), sigma, 4 * sigma).item()
    assert out.mask[0, 0, 8, 8].item() == pytest.approx(expected, abs=1e-5)
    assert expected > rim_profile(torch.tensor(3.0, dtype=torch.float64), sigma, 4 * sigma).item() + 0.1


@pytest.mark.parametrize("soft", [None, 1.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_render_under_autocast_is_the_float32_render(backend, soft):
    """Under bf16 autocast, and with bf16 inputs, the renderer computes and returns float32: the same
    numbers as the float32 render of the same (float32) inputs."""
    name, opts, device = backend
    if name == "pytorch3d":
        pytest.importorskip("pytorch3d")
    renderer = build_renderer(name, soft_edges=soft, **opts)
    h, w = 12, 14
    K = _K(12.0, w / 2.0, h / 2.0).to(device)
    corners = _unproject([(2.0, 2.0), (12.0, 3.0), (11.0, 10.0), (3.0, 9.0)], 30.0, K.cpu())
    corners[:, 2] += torch.tensor([0.0, 4.0, 8.0, 2.0])
    verts = corners[None].to(device)
    tri = torch.tensor([[0, 3, 2], [0, 2, 1]], device=device)
    attrs = torch.tensor([[[0.1, 0.2], [0.9, 0.3], [0.4, 0.8], [0.7, 0.6]]], device=device)
    ref = renderer(verts, tri, attrs, (h, w), K)
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        amp = renderer(verts, tri, attrs, (h, w), K)
        low = renderer(verts.bfloat16(), tri, attrs.bfloat16(), (h, w), K.bfloat16())
    low_ref = renderer(verts.bfloat16().float(), tri, attrs.bfloat16().float(), (h, w), K.bfloat16().float())
    for name_ in ("image", "mask", "depth"):
        a, b = getattr(amp, name_), getattr(ref, name_)
        assert a.dtype == torch.float32 and getattr(low, name_).dtype == torch.float32, name_
        assert torch.equal(a, b), name_
        assert torch.allclose(getattr(low, name_), getattr(low_ref, name_), atol=1e-6), name_
