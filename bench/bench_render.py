#!/usr/bin/env python
"""Renderer cost per stage on the ICT face mesh (9,409 vertices, 18,460 triangles), batch 8.

    python bench/bench_render.py                                   # CPU, 112 and 224, numba kernels
    python bench/bench_render.py --impl torch                      # the vectorised torch path on CPU
    python bench/bench_render.py --device cuda --out bench/results/render_cuda.json
    python bench/bench_render.py --soft-edges 1.0                  # include the soft silhouette

Stages (median ms over ``--repeats`` timed runs after ``--warmup`` runs):
  raster       project vertices + rasterise the triangle id per pixel (+ nearest silhouette
               triangle when --soft-edges is set); no gradient
  interpolate  differentiable perspective-correct interpolation of colour (3 ch) and depth
               (+ the soft mask)
  backward     backward of a scalar loss on image, depth and mask down to vertices and colours
  total        one full renderer call + backward, timed separately end to end
If ``recognition.backbones.build_backbone`` imports, the same run also times one IResNet-50
forward + backward at batch 8, 112x112 (3 input channels, train mode) and reports total / that.
Prints a markdown table; ``--out`` writes JSON (and a .md next to it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from recon.render import build_renderer, project_vertices  # noqa: E402
from recon.render.interpolate import interpolate, soft_silhouette  # noqa: E402
from recon.render.rasterize import nearest_triangle, rasterize, resolve_impl  # noqa: E402
from _common import open_device, timed  # noqa: E402  (bench/ is on sys.path when a script here runs)


def load_ict(path: Optional[str] = None):
    """ICT face region mean mesh, rotated 180 degrees about x and pushed to z = 50 cm."""
    candidates = [path] if path else []
    candidates += [ROOT.parent / "shared/assets/ict-face/ict_face_region.npz"]
    try:
        from lh2face.paths import asset

        for name in ("ict", "ict-face"):
            try:
                candidates.append(next(asset(name).glob("*.npz")))
            except (FileNotFoundError, StopIteration):
                pass
    except ImportError:
        pass
    for c in candidates:
        if c and Path(c).exists():
            d = np.load(c)
            v = torch.tensor(d["mean"], dtype=torch.float32) * torch.tensor([1.0, -1.0, -1.0])
            v[:, 2] += 50.0
            return v, torch.tensor(d["triangles"].astype(np.int64)), str(c)
    raise FileNotFoundError("ICT mesh npz not found; pass --mesh PATH (keys mean, triangles)")


def bench_size(size: int, args, verts0: torch.Tensor, tris: torch.Tensor, device: torch.device) -> Dict[str, Any]:
    b = args.batch
    g = torch.Generator().manual_seed(0)
    verts = (verts0[None].repeat(b, 1, 1) + 0.5 * torch.randn(b, 1, 3, generator=g)).to(device)
    colour = torch.rand(b, verts0.shape[0], 3, generator=g).to(device)
    tris = tris.to(device)
    f = size * 50.0 / 22.0  # the face (about 20 cm tall) fills most of the frame
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]], device=device).expand(b, 3, 3)
    impl = resolve_impl(args.impl, device)
    soft = args.soft_edges
    renderer = build_renderer("torch", impl=impl, soft_edges=soft)
    v = verts.clone().requires_grad_(True)
    c = colour.clone().requires_grad_(True)
    state: Dict[str, Any] = {}

    def raster():
        with torch.no_grad():
            scr = project_vertices(v, K)
            face, _ = rasterize(scr, tris, (size, size), impl=impl)
            face = face.to(device)
            near = nearest_triangle(scr, tris, face, 4.0 * soft, impl=impl).to(device) if soft else None
        state.update(face=face, near=near)

    def interp():
        scr = project_vertices(v, K)
        image, depth = interpolate(scr, c, tris, state["face"], impl)
        if soft:
            mask = soft_silhouette(scr, tris, state["face"], state["near"], soft, 4.0 * soft)
        else:
            mask = (state["face"] >= 0).float().unsqueeze(1)
        state.update(loss=image.square().sum() + depth.sum() * 1e-3 + mask.sum())

    def backward():
        interp()  # untimed part is subtracted below
        state["loss"].backward()
        v.grad = None
        c.grad = None

    def total():
        out = renderer(v, tris, c, size, K)
        (out.image.square().sum() + out.depth.sum() * 1e-3 + out.mask.sum()).backward()
        v.grad = None
        c.grad = None

    raster()
    t_raster = timed(raster, device, args.repeats, args.warmup)
    t_interp = timed(interp, device, args.repeats, args.warmup)
    t_interp_bwd = timed(backward, device, args.repeats, args.warmup)
    t_total = timed(total, device, args.repeats, args.warmup)
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    row = {
        "size": size,
        "batch": b,
        "impl": impl,
        "soft_edges": soft,
        "coverage": float((state["face"] >= 0).float().mean()),
        "raster_ms": med(t_raster),
        "interpolate_ms": med(t_interp),
        "backward_ms": max(0.0, med(t_interp_bwd) - med(t_interp)),
        "total_ms": med(t_total),
    }
    return row


def bench_backbone(args, device: torch.device) -> Optional[Dict[str, Any]]:
    try:
        from recognition.backbones import build_backbone
    except Exception as err:  # another engineer's module, may not exist yet
        print(f"(IResNet-50 column skipped: {type(err).__name__}: {err})", file=sys.stderr)
        return None
    try:
        model = build_backbone("iresnet50", in_channels=3, embedding_size=512).to(device).train()
    except Exception as err:
        print(f"(IResNet-50 column skipped: {type(err).__name__}: {err})", file=sys.stderr)
        return None
    x = torch.rand(args.batch, 3, 112, 112, device=device)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()

    t = timed(step, device, max(3, args.repeats // 2), 2)
    return {"model": "iresnet50", "batch": args.batch, "input": [3, 112, 112], "fwd_bwd_ms": statistics.median(t) * 1e3}


def to_markdown(rows: List[Dict[str, Any]], backbone: Optional[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    head = "| size | batch | impl | soft | raster ms | interpolate ms | backward ms | total ms |"
    sep = "|---|---|---|---|---|---|---|---|"
    if backbone:
        head += " total / IResNet-50 fwd+bwd |"
        sep += "---|"
    lines = [
        f"Renderer on the ICT face mesh ({meta['vertices']} vertices, {meta['triangles']} triangles); "
        f"device {meta['device']}, torch threads {meta['torch_threads']}, {meta['cpu_count']} CPUs visible"
        + (f", 1-min load average {meta['load_average'][0]:.1f} after the run." if meta.get("load_average") else "."),
        "",
        head,
        sep,
    ]
    for r in rows:
        line = (
            f"| {r['size']} | {r['batch']} | {r['impl']} | {r['soft_edges'] or '-'} | {r['raster_ms']:.1f} | "
            f"{r['interpolate_ms']:.1f} | {r['backward_ms']:.1f} | {r['total_ms']:.1f} |"
        )
        if backbone:
            line += f" {r['total_ms'] / backbone['fwd_bwd_ms']:.3f} |"
        lines.append(line)
    if backbone:
        lines += ["", f"IResNet-50 fwd+bwd, batch {backbone['batch']}, 3x112x112: {backbone['fwd_bwd_ms']:.1f} ms"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--impl", default="auto", choices=["auto", "numba", "torch"])
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--soft-edges", type=float, default=None, help="sigma in px (default: hard mask)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (also the kernel pool)")
    p.add_argument("--mesh", default=None, help="npz with keys mean, triangles (default: the ICT face)")
    p.add_argument("--no-backbone", action="store_true", help="skip the IResNet-50 reference")
    p.add_argument("--out", default=None, help="JSON path (a .md with the table is written next to it)")
    args = p.parse_args(argv)
    device = open_device("bench_render", args.device, args.threads)
    if device is None:
        return 2
    verts, tris, mesh_path = load_ict(args.mesh)
    rows = [bench_size(s, args, verts, tris, device) for s in args.sizes]
    backbone = None if args.no_backbone else bench_backbone(args, device)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "mesh": mesh_path,
        "vertices": int(verts.shape[0]),
        "triangles": int(tris.shape[0]),
        "repeats": args.repeats,
    }
    md = to_markdown(rows, backbone, meta)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "rows": rows, "backbone": backbone}, indent=2) + "\n")
        out.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
