"""Export reconstructed faces: canonical render, 16-bit depth, meshes and coefficients.

Per face, one folder holding

* ``canonical.png``  the canonical render (identity kept, neutral expression, frontal, standard light),
  112x112 RGB;
* ``depth.png``      the canonical depth (normalised to [0,1] inside the face mask, 0 outside) as a 16-bit
  greyscale PNG, value = round(depth * 65535);
* ``depth.npy``      the same depth as float32 (H, W);
* ``mesh.obj`` / ``mesh.ply``  the reconstructed shape (identity + expression) in model space, centimetres,
  +y up, +z towards the viewer, with per-vertex albedo colours (written by trimesh);
* ``coeffs.json``    the coefficient vector and its named layout (`load_coeffs` reads it back).

A face folder is written into a hidden temporary folder beside it and renamed into place, so a crash never
leaves a half-written face; an existing face folder is only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from lh2face.io import PathLike, write_json_atomic

__all__ = [
    "COEFFS_FORMAT",
    "ExportExistsError",
    "depth_to_uint16",
    "uint16_to_depth",
    "mesh_bytes",
    "coeffs_document",
    "load_coeffs",
    "face_folder",
    "export_coefficients",
    "export_photos",
    "synthetic_identities",
    "face_outputs",
    "load_coeffs",
]

COEFFS_FORMAT = "lh2face-coeffs-v1"
DEPTH_SCALE = 65535.0


class ExportExistsError(FileExistsError):
    """The target already exists and overwrite was not requested."""


# ----------------------------------------------------------------------------------------- depth


def depth_to_uint16(depth: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Normalised depth in [0,1], (H,W) or (1,H,W) -> uint16 (H,W) = round(depth * 65535)."""
    d = depth.detach().cpu().numpy() if torch.is_tensor(depth) else np.asarray(depth)
    if d.ndim == 3 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 2:
        raise ValueError(f"depth must be (H,W) or (1,H,W), got {np.shape(depth)}")
    return np.round(np.clip(d.astype(np.float64), 0.0, 1.0) * DEPTH_SCALE).astype(np.uint16)


def uint16_to_depth(d16: np.ndarray) -> np.ndarray:
    """Inverse of depth_to_uint16: uint16 (H,W) -> float32 (H,W) in [0,1]."""
    return (np.asarray(d16).astype(np.float64) / DEPTH_SCALE).astype(np.float32)


# ------------------------------------------------------------------------------------------ meshes


def _colours_uint8(colours: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
    if colours is None:
        return None
    c = np.asarray(colours, dtype=np.float64)
    if c.shape != (n, 3):
        raise ValueError(f"vertex colours must be ({n},3) floats in [0,1], got {c.shape}")
    rgb = np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)
    return np.concatenate([rgb, np.full((n, 1), 255, np.uint8)], axis=1)


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, colours: Optional[np.ndarray] = None,
               file_type: str = "obj") -> bytes:
    """Encode a triangle mesh with trimesh. vertices (V,3) float, faces (F,3) int, colours (V,3) in [0,1].

    file_type 'obj' (text, `v x y z r g b` lines) or 'ply' (binary, uchar RGBA vertex colours). Vertex order
    and faces are kept as given (no merging or reordering).
    """
    import trimesh

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"need vertices (V,3) and faces (F,3), got {v.shape} and {f.shape}")
    mesh = trimesh.Trimesh(vertices=v, faces=f, vertex_colors=_colours_uint8(colours, len(v)), process=False)
    if file_type == "obj":
        data = trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_color=colours is not None,
                                               include_texture=False, digits=6)
        return data.encode("utf-8") if isinstance(data, str) else data
    if file_type == "ply":
        return trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False)
    raise ValueError(f"unknown mesh type {file_type!r}; use 'obj' or 'ply'")


# ----------------------------------------------------------------------------------- coefficients


def coeffs_document(coeffs: Union[np.ndarray, torch.Tensor], layout: Any, source: Optional[str] = None,
                    extra: Optional[dict] = None) -> dict:
    """The coeffs.json content for one face: format tag, named slices {name: [start, stop]}, values (P,)."""
    c = coeffs.detach().cpu().double().numpy() if torch.is_tensor(coeffs) else np.asarray(coeffs, np.float64)
    c = c.reshape(-1)
    slices = layout_slices(layout)
    if slices and max(s[1] for s in slices.values()) != c.size:
        raise ValueError(f"coefficient vector has {c.size} values but the layout describes "
                         f"{max(s[1] for s in slices.values())}")
    doc = {"format": COEFFS_FORMAT, "size": int(c.size), "layout": slices, "coeffs": [float(x) for x in c]}
    if source is not None:
        doc["source"] = str(source)
    if extra:
        doc.update(extra)
    return doc


def layout_slices(layout: Any) -> dict[str, list[int]]:
    """{name: [start, stop]} of a recon.coeffs.CoeffLayout (from its `slices` mapping or its split)."""
    if layout is None:
        return {}
    sl = getattr(layout, "slices", None)
    if callable(sl):
        sl = sl()
    if isinstance(sl, dict):
        return {str(k): [int(v.start), int(v.stop)] if isinstance(v, slice) else [int(v[0]), int(v[1])]
                for k, v in sl.items()}
    # fall back on split() of an index vector
    idx = torch.arange(int(layout.size), dtype=torch.float64)[None]
    parts = layout.split(idx)
    out = {}
    for k, v in parts.items():
        flat = v.reshape(-1)
        out[str(k)] = [int(flat.min()), int(flat.max()) + 1]
    return out


def load_coeffs(path: PathLike, size: Optional[int] = None) -> tuple[torch.Tensor, list[str]]:
    """Read coefficient vectors from a file -> (coeffs (N,P) float32, names (N,)).

    Accepted: a coeffs.json written by export (one face), a JSON list of vectors, a JSON object
    {"faces": [coeffs.json documents or vectors]}, .npy (P,) or (N,P), .npz with a `coeffs` array,
    .pt / .pth holding a tensor (P,) or (N,P). With `size`, each vector must have that many values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such coefficient file")
    suffix = path.suffix.lower()
    names: Optional[list[str]] = None
    if suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(doc, dict) and "coeffs" in doc:
            rows = [doc["coeffs"]]
            names = [str(doc.get("name", path.parent.name if path.name == "coeffs.json" else path.stem))]
        elif isinstance(doc, dict) and "faces" in doc:
            rows = [f["coeffs"] if isinstance(f, dict) else f for f in doc["faces"]]
            names = [str(f.get("name", f"face_{i:03d}")) if isinstance(f, dict) else f"face_{i:03d}"
                     for i, f in enumerate(doc["faces"])]
        elif isinstance(doc, list):
            rows = doc if doc and isinstance(doc[0], list) else [doc]
        else:
            raise ValueError(f"{path}: expected a coeffs.json document, a list of vectors or {{'faces': [...]}}")
        try:
            arr = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: coefficient vectors must be equal-length lists of numbers") from exc
    elif suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "coeffs" not in z.files:
                raise ValueError(f"{path}: the npz has no 'coeffs' array (keys: {z.files})")
            arr = z["coeffs"]
    elif suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "coeffs" in obj:
            obj = obj["coeffs"]
        if not torch.is_tensor(obj):
            raise ValueError(f"{path}: expected a tensor or {{'coeffs': tensor}}")
        arr = obj.detach().double().numpy()
    else:
        raise ValueError(f"{path}: unknown coefficient file type {suffix!r}; use .json, .npy, .npz or .pt")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{path}: coefficients must be (P,) or (N,P), got {arr.shape}")
    if size is not None and arr.shape[1] != size:
        raise ValueError(f"{path}: coefficient vectors have {arr.shape[1]} values, the model's layout needs {size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: coefficients contain NaN or inf")
    if names is None or len(names) != arr.shape[0]:
        names = [f"face_{i:03d}" for i in range(arr.shape[0])]
    return torch.from_numpy(arr.astype(np.float32)), names


# ------------------------------------------------------------------------------------ face folders


def unique_names(names: Sequence[str]) -> list[str]:
    """Make folder names safe (no separators) and unique by appending _2, _3, ..."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for n in names:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(n)).strip(".") or "face"
        k = seen.get(safe, 0) + 1
        seen[safe] = k
        out.append(safe if k == 1 else f"{safe}_{k}")
    return out


def check_targets(out_dir: PathLike, names: Sequence[str], overwrite: bool) -> None:
    """Raise ExportExistsError naming the clashes when any out_dir/name exists and overwrite is off."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportExistsError(f"{out_dir} exists and is not a folder")
    if overwrite:
        return
    clashes = [n for n in names if (out_dir / n).exists()]
    if clashes:
        shown = ", ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else "")
        raise ExportExistsError(f"{out_dir}: {len(clashes)} face folder(s) already exist ({shown}); "
                                "pass --overwrite to replace them or choose another --out")


def png_bytes(image: Any) -> bytes:
    """Encode an image as PNG in memory: uint16 (H,W) -> 16-bit greyscale; otherwise as lh2face.io.save_image
    (uint8 (H,W[,C]) or float [0,1] (C,H,W) / (H,W,C))."""
    from PIL import Image

    from lh2face.io import to_uint8

    arr = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise ValueError(f"16-bit images must be (H, W), got {arr.shape}")
        im = Image.fromarray(arr)
    else:
        im = Image.fromarray(to_uint8(arr))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _default_mode() -> int:
    """0o777 minus the process umask (temporary files and folders are created private)."""
    old = os.umask(0o022)
    os.umask(old)
    return 0o777 & ~old


def face_folder(target: PathLike, files: dict[str, Any], overwrite: bool = False) -> Path:
    """Write one face folder atomically: every file into a hidden sibling folder, then rename into place.

    files: {name: bytes | uint8/uint16 image array | float32 array (.npy) | dict (.json)}.
    An existing `target` is replaced only with overwrite=True (swapped out, then deleted).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise ExportExistsError(f"{target} already exists; pass --overwrite to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for name, value in files.items():
            dst = tmp / name
            if isinstance(value, (bytes, bytearray)):
                dst.write_bytes(bytes(value))
            elif isinstance(value, dict):
                dst.write_text(json.dumps(value, indent=1) + "\n")
            elif name.endswith(".npy"):
                buf = io.BytesIO()
                np.save(buf, np.asarray(value), allow_pickle=False)
                dst.write_bytes(buf.getvalue())
            else:
                dst.write_bytes(png_bytes(value))
        mode = _default_mode()
        for f in tmp.iterdir():  # data on disk, ordinary permissions, before the folder becomes visible
            os.chmod(f, mode & 0o666)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, trash / "old")
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------------------- pipeline


def synthetic_identities(model: Any, num: int, seed: int = 0, identity_offset: int = 0) -> torch.Tensor:
    """Coefficient vectors (num, P) of synthetic identities (recon.synth draws for (seed, identity)):
    the identity's shape and albedo, neutral expression, frontal pose, canonical translation, standard light."""
    from .coeffs import CoeffLayout
    from .synth import identity_coefficients

    if num < 1:
        raise ValueError(f"the number of synthetic faces must be >= 1, got {num}")
    layout = CoeffLayout.from_model(model)
    base = layout.mean_frontal(num)
    parts = layout.split(base)
    for i in range(num):
        d = identity_coefficients(model, seed, identity_offset + i)
        parts["id"][i] = torch.from_numpy(d["id"]).to(base)
        parts["albedo"][i] = torch.from_numpy(d["albedo"]).to(base)
    return base


def face_outputs(model: Any, renderer: Any, coeffs: torch.Tensor, neutral_mesh: bool = False
                 ) -> dict[str, torch.Tensor]:
    """Everything a face folder holds, batched: canonical (B,3,112,112), depth (B,1,112,112) in [0,1],
    vertices (B,V,3) model space cm (identity + expression unless neutral_mesh), colours (B,V,3) albedo."""
    from .canonical import render_canonical
    from .coeffs import CoeffLayout

    layout = CoeffLayout.from_model(model)
    if coeffs.dim() != 2 or coeffs.shape[1] != layout.size:
        raise ValueError(f"coefficients must be (B,{layout.size}) for this model, got {tuple(coeffs.shape)}")
    p = layout.split(coeffs)
    with torch.no_grad():
        canonical, depth = render_canonical(model, renderer, coeffs)
        verts = model.shape(p["id"], None if neutral_mesh else p["expr"])
        colours = model.albedo(p["albedo"])
    return {"canonical": canonical.clamp(0, 1), "depth": depth.clamp(0, 1), "vertices": verts, "colours": colours}


def face_files(outputs: dict[str, torch.Tensor], b: int, triangles: np.ndarray, coeffs_doc: dict
               ) -> dict[str, Any]:
    """The {file name: content} of face `b` of face_outputs(...) for face_folder()."""
    depth = outputs["depth"][b, 0].cpu().numpy().astype(np.float32)
    verts = outputs["vertices"][b].cpu().numpy()
    cols = outputs["colours"][b].cpu().numpy()
    return {
        "canonical.png": outputs["canonical"][b],
        "depth.png": depth_to_uint16(depth),
        "depth.npy": depth,
        "mesh.obj": mesh_bytes(verts, triangles, cols, "obj"),
        "mesh.ply": mesh_bytes(verts, triangles, cols, "ply"),
        "coeffs.json": coeffs_doc,
    }


def export_coefficients(coeffs: torch.Tensor, out_dir: PathLike, names: Optional[Sequence[str]] = None,
                        overwrite: bool = False, model: Any = None, renderer: Any = None,
                        backend: str = "auto", batch_size: int = 16, sources: Optional[Sequence[str]] = None,
                        extra_files: Optional[Sequence[dict]] = None, neutral_mesh: bool = False,
                        progress: bool = True) -> list[Path]:
    """Write one face folder per row of coeffs (N,P) into out_dir; returns the folders.

    names: folder names (default face_000, ...); all clashes are checked before anything is written.
    extra_files: per face, more {file name: content} for its folder (e.g. the aligned input photo).
    """
    from tqdm import tqdm

    from .coeffs import CoeffLayout
    from .morphable import MorphableModel
    from .render import build_renderer

    model = model if model is not None else MorphableModel()
    renderer = renderer if renderer is not None else build_renderer(backend)
    layout = CoeffLayout.from_model(model)
    coeffs = torch.as_tensor(coeffs, dtype=torch.float32)
    if coeffs.dim() == 1:
        coeffs = coeffs[None]
    if coeffs.dim() != 2 or coeffs.shape[1] != layout.size:
        raise ValueError(f"coefficients must be (N,{layout.size}) for the bundled model, got {tuple(coeffs.shape)}")
    n = coeffs.shape[0]
    names = unique_names(names if names is not None else [f"face_{i:03d}" for i in range(n)])
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} faces")
    check_targets(out_dir, names, overwrite)
    out_dir = Path(out_dir)
    tris = model.triangles.cpu().numpy()
    folders: list[Path] = []
    bar = tqdm(total=n, unit="face", desc=f"export -> {out_dir}", disable=not progress, dynamic_ncols=True)
    for start in range(0, n, batch_size):
        chunk = coeffs[start : start + batch_size]
        outputs = face_outputs(model, renderer, chunk, neutral_mesh=neutral_mesh)
        for b in range(chunk.shape[0]):
            i = start + b
            doc = coeffs_document(chunk[b], layout, source=None if sources is None else sources[i],
                                  extra={"name": names[i], "mesh": "neutral" if neutral_mesh else "id+expr"})
            files = face_files(outputs, b, tris, doc)
            if extra_files is not None and extra_files[i]:
                files.update(extra_files[i])
            folders.append(face_folder(out_dir / names[i], files, overwrite=overwrite))
            bar.update(1)
    bar.close()
    return folders


def export_photos(paths: Sequence[PathLike], out_dir: PathLike, overwrite: bool = False, detector: str = "dlib",
                  backend: str = "auto", progress: bool = True, **fit_options: Any) -> dict:
    """Detect, align and reconstruct each photo (recon.photos.reconstruct_photos), then export a face folder
    per photo that worked (named after the file; aligned.png = the aligned 112x112 input). Writes
    out_dir/report.json: {"processed": [{path, folder}], "skipped": [{path, reason}], "seconds": {detect,
    regress, fit: totals over the photos}} and returns it. fit_options go to reconstruct_photos (fit_steps,
    regressor + refine_steps, FitConfig fields).
    Folders are expanded by recon.photos.list_images; clashes are refused up front unless overwrite."""
    from .coeffs import CoeffLayout
    from .morphable import MorphableModel
    from .photos import list_images, new_photo_report, reconstruct_photos, record_result
    from .render import build_renderer

    files = list_images(paths)
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(str(p) for p in paths)}")
    out_dir = Path(out_dir)
    names = unique_names([f.stem for f in files])
    check_targets(out_dir, names + ["report.json"], overwrite)
    name_of = {str(f): n for f, n in zip(files, names)}
    model = MorphableModel()
    renderer = build_renderer(backend)
    layout = CoeffLayout.from_model(model)
    report = new_photo_report()
    for res in reconstruct_photos(files, detector=detector, model=model, renderer=renderer, **fit_options):
        path = str(res.path)
        reason = record_result(report, res)
        if reason:
            if progress:
                print(f"  skipped {path}: {reason}")
            continue
        try:
            coeffs = torch.as_tensor(res.coeffs, dtype=torch.float32).reshape(1, layout.size)
            extra = {}
            if getattr(res, "aligned", None) is not None:
                extra["aligned.png"] = np.asarray(res.aligned)
            name = name_of.get(path) or unique_names([Path(path).stem])[0]
            folder = export_coefficients(coeffs, out_dir, names=[name], overwrite=overwrite, model=model,
                                         renderer=renderer, sources=[path], extra_files=[extra], progress=False)[0]
        except (ValueError, OSError) as exc:
            report["skipped"].append({"path": path, "reason": f"export failed: {exc}"})
            continue
        report["processed"].append({"path": path, "folder": str(folder)})
        if progress:
            print(f"  {path} -> {folder}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "report.json", report)
    return report
