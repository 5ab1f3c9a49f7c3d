#!/usr/bin/env python
"""Identity in the 3D channels, measured: face verification using only the reconstruction's outputs.

    python bench/identity_3d.py                                    # lfw-dev 20x10 + AT&T 20x5, per-photo fit
    python bench/identity_3d.py --fit w_id=2e-5 --fit w_albedo=3e-5 --variant weak_priors
    python bench/identity_3d.py --regressor assets/regressor/regressor.pt   # or a run folder
    python bench/identity_3d.py --grid docs/images/real_grid.png   # also the real-photo grid (lfw-dev)

Per photo: dlib 68 landmarks (cached in --cache-dir/landmarks_<set>.npz), alignment to the 112 ArcFace
crop (recon.fitting.crops_from_cache), coefficients from the per-photo fit (recon.fitting.fit_image with
FitConfig + the --fit overrides; cached in --cache-dir/fits_<set>_<variant>.npz, resumable) or from a
regressor (--regressor), then the canonical render and depth (recon.canonical.render_canonical).

Verification (recon.identity_eval + recognition.eval): features per photo, cosine score per pair.
  id            identity coefficients (100), raw (their prior mean is 0)
  id_centred    identity coefficients minus the set's mean
  albedo        albedo coefficients (3 x 20), minus the set's mean
  canonical     canonical render, pixels covered by >= half of the faces, minus the set's mean image
  canonical_std the same, each image standardised first (zero mean, unit std: brightness removed)
  canonical_lit canonical render times the fitted light's mean shading over the standard light's (per colour
                channel, over the frontal face's vertex normals): the photo's skin tone, which the fit
                otherwise leaves in the light (measurement only, see docs/IDENTITY_3D.md)
  canon_shape   canonical render with the mean albedo (shape only, through the standard shading)
  depth         canonical depth (recon.canonical: normalised per face to [0,1]), same region, minus the set's mean
  depth_cm      the canonical camera's z in cm before that normalisation, on the pixels every face covers,
                minus the set's mean
  expr          expression coefficients (53), minus the set's mean: identity that leaked into expression
                (the canonical render drops it)
  photo         reference: the aligned photo itself (grey, whole crop, standardised, minus the mean)
Accuracy: all genuine pairs + as many random impostor pairs (chance 50 %), 10-fold LFW protocol.
TAR@FAR=1e-2 and AUC: over all pairs (chance: TAR = FAR = 0.01, AUC 0.5).
spread: mean over the feature's dimensions of its std over the set (how much faces differ at all);
identity share: between-person share of the feature's variance (~(people-1)/(photos-1) without identity).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DEFAULT_SETS = {"lfw-dev": (ROOT.parent / "shared" / "data" / "lfw-dev", 20, 10),
                "att": (ROOT.parent / "shared" / "data" / "att_faces", 20, 5)}
FEATURES = ("id", "id_centred", "albedo", "canonical", "canonical_std", "canonical_lit", "canon_shape", "depth",
            "depth_cm", "expr", "photo")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm")


def _natural(s: str) -> List[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def select_photos(root: Path, people: int, photos: int) -> List[Path]:
    """The first `people` identity folders of root (natural order) with at least `photos` images, and the
    first `photos` images of each (natural order)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder (an ImageFolder: one sub-folder per person)")
    out: List[Path] = []
    n = 0
    for d in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: _natural(p.name)):
        files = sorted((f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=lambda f: _natural(f.name))
        if len(files) < photos:
            continue
        out.extend(files[:photos])
        n += 1
        if n == people:
            break
    if n < 2:
        raise ValueError(f"{root}: fewer than 2 people with {photos} photos each; lower --limit")
    return out


def landmark_cache(paths: Sequence[Path], cache_file: Path) -> Any:
    """LandmarkCache rows for `paths` (in that order), detecting only what cache_file lacks (dlib)."""
    from recon.landmarks.cache import LandmarkCache, build_cache, load_cache

    want = [str(p.resolve()) for p in paths]
    have = load_cache(cache_file) if cache_file.is_file() else None
    index = {str(Path(p).resolve()): k for k, p in enumerate(have.paths)} if have is not None else {}
    missing = [p for p in want if p not in index]
    if missing:
        from tqdm import tqdm

        from recon.landmarks import build_detector

        bar = tqdm(total=len(missing), desc=f"landmarks {cache_file.stem}", unit="img")
        new = build_cache(missing, build_detector("dlib"), progress=lambda *a: bar.update(1))
        bar.close()
        parts = [have, new] if have is not None else [new]
        merged = LandmarkCache(**{f.name: (np.concatenate([getattr(c, f.name) for c in parts])
                                           if isinstance(getattr(new, f.name), np.ndarray) else getattr(new, f.name))
                                  for f in dataclasses.fields(LandmarkCache)})
        merged.save(cache_file)
        have = merged
        index = {str(Path(p).resolve()): k for k, p in enumerate(have.paths)}
    rows = np.array([index[p] for p in want])
    return dataclasses.replace(have, **{f.name: getattr(have, f.name)[rows] for f in dataclasses.fields(have)
                                        if isinstance(getattr(have, f.name), np.ndarray)})


def fit_coefficients(crops: np.ndarray, landmarks: np.ndarray, paths: Sequence[str], cache_file: Path,
                     overrides: Dict[str, Any], batch: int, model: Any,
                     renderer: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-photo fits (recon.fitting.fit_image, `batch` photos per call: each photo keeps its own
    coefficients) -> coeffs (N,P), landmark NME after the fit (N,), fit seconds per photo (N,) (its call's
    wall time / photos in the call, as measured when it was fitted). Cached per path in cache_file, saved
    after every batch, so an interrupted run resumes."""
    from tqdm import tqdm

    from lh2face.io import write_bytes_atomic
    from recon.fitting import FitConfig, fit_image
    import io

    cfg = FitConfig(**overrides)
    done: Dict[str, Tuple[np.ndarray, float, float]] = {}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            if str(z["config"]) != repr(cfg):
                raise ValueError(f"{cache_file} was fitted with another FitConfig ({z['config']}); "
                                 "give another --variant name or delete the file")
            secs = z["seconds"] if "seconds" in z.files else np.full(len(z["paths"]), np.nan)
            done = {str(p): (c, float(e), float(t)) for p, c, e, t in zip(z["paths"], z["coeffs"], z["nme"], secs)}
    todo = [k for k, p in enumerate(paths) if p not in done]

    def save() -> None:
        buf = io.BytesIO()
        keys = list(done)
        np.savez(buf, paths=np.array(keys), coeffs=np.stack([done[k][0] for k in keys]),
                 nme=np.array([done[k][1] for k in keys]), seconds=np.array([done[k][2] for k in keys]),
                 config=np.array(repr(cfg)))
        write_bytes_atomic(cache_file, buf.getvalue())

    if todo:
        bar = tqdm(total=len(todo), desc=f"fit {cache_file.stem}", unit="img")
        for s in range(0, len(todo), batch):
            idx = todo[s:s + batch]
            t0 = time.perf_counter()
            res = fit_image(crops[idx], landmarks[idx], model, renderer, config=cfg)
            dt = (time.perf_counter() - t0) / len(idx)
            for k, c, e in zip(idx, res.coeffs.numpy(), res.nme_after):
                done[paths[k]] = (c.astype(np.float32), float(e), dt)
            save()
            bar.update(len(idx))
        bar.close()
    return tuple(np.array([done[p][f] for p in paths]) for f in range(3))  # type: ignore[return-value]


def load_regressor(path: str) -> torch.nn.Module:
    """A CoeffRegressor (eval mode, float32) from: a trained run folder or joint checkpoint
    (joint.runs.load_run(...).trunk.regressor); a file written by recon.regressor.save_regressor (the
    pretrained assets/regressor/regressor.pt: loaded with recon.regressor.load_pretrained_regressor where
    that exists); or a CoeffRegressor state dict (torch.save or lh2face.io.save_checkpoint; plain or under
    'state_dict' / 'regressor' / 'model'; width and hidden size read from the weights' shapes)."""
    from lh2face.io import CheckpointError, load_checkpoint
    from recon.regressor import CoeffRegressor

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such regressor file or run folder")
    if p.is_dir():
        from joint.runs import load_run

        return load_run(str(p))[0].trunk.regressor.float().eval()
    try:
        state = load_checkpoint(p)
    except CheckpointError:  # not an lh2face checkpoint: a plain torch.save file
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on garbage
            raise ValueError(f"{p}: unreadable regressor file ({exc.__class__.__name__}: {exc})") from None
    if isinstance(state, dict) and str(state.get("format", "")).startswith("lh2face-coeff-regressor"):
        try:
            from recon.regressor import load_pretrained_regressor  # the pretrained regressor's own loader
        except ImportError:
            pass
        else:
            return load_pretrained_regressor(p).float().eval()
    if isinstance(state, dict) and "config" in state and "model" in state:  # a joint training checkpoint
        from joint.runs import load_run

        return load_run(str(p))[0].trunk.regressor.float().eval()
    if isinstance(state, dict):
        for key in ("state_dict", "regressor", "model"):
            if isinstance(state.get(key), dict) and "head.weight" in state[key]:
                state = state[key]
                break
    if not isinstance(state, dict) or "head.weight" not in state or "trunk.0.0.weight" not in state:
        raise ValueError(f"{p}: not a CoeffRegressor state dict (no head.weight / trunk.0.0.weight)")
    reg = CoeffRegressor(width=int(state["trunk.0.0.weight"].shape[0]), hidden=int(state["head.weight"].shape[1]))
    try:
        reg.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ValueError(f"{p}: weights do not fit a CoeffRegressor ({str(exc).splitlines()[0]})") from None
    return reg.eval()


@torch.no_grad()
def regress_coefficients(regressor: torch.nn.Module, crops: np.ndarray, batch: int = 32) -> np.ndarray:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    return torch.cat([regressor(x[s:s + batch]) for s in range(0, len(x), batch)]).numpy()


@torch.no_grad()
def light_gain(model: Any, ident: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """(B,3) per-channel ratio of the mean shading of the frontal canonical face's vertices under the
    fitted light (B,27) to that under recon.lighting.standard_light: how much brighter / more tinted the
    fit made the light instead of the albedo."""
    from recon.camera import canonical_camera
    from recon.lighting import sh_shading, standard_light

    cam = canonical_camera(112)
    normals = model.vertex_normals(model.shape(ident, None) @ cam.R.T + cam.t)
    fit = sh_shading(normals, light).mean(1)
    std = sh_shading(normals, standard_light(len(ident)).expand(len(ident), -1)).mean(1)
    return fit / std.clamp_min(1e-6)


@torch.no_grad()
def canonical_renders(coeffs: np.ndarray, model: Any, renderer: Any, batch: int = 16) -> Dict[str, np.ndarray]:
    """canonical (N,3,112,112), canonical_lit (times light_gain), canon_shape (same, mean albedo),
    depth (N,1,112,112), depth_cm (N,1,112,112) camera z in cm (0 off the face), mask (N,1,112,112)."""
    from recon.camera import canonical_camera
    from recon.canonical import render_canonical
    from recon.coeffs import CoeffLayout

    layout = CoeffLayout.from_model(model)
    out: Dict[str, List[np.ndarray]] = {"canonical": [], "canonical_lit": [], "canon_shape": [], "depth": [],
                                        "depth_cm": []}
    cam = canonical_camera(112)
    c = torch.from_numpy(np.asarray(coeffs, np.float32))
    for s in range(0, len(c), batch):
        cb = c[s:s + batch]
        canon, depth = render_canonical(model, renderer, cb)
        p = layout.split(cb)
        shape_only, _ = render_canonical(model, renderer, p["id"], albedo=torch.zeros_like(p["albedo"]).reshape(len(cb), -1))
        out["canonical"].append(canon.numpy())
        gain = light_gain(model, p["id"], p["light"])
        out["canonical_lit"].append((canon * gain[:, :, None, None]).clamp(0, 1).numpy())
        out["canon_shape"].append(shape_only.numpy())
        out["depth"].append(depth.numpy())
        vcam = model.shape(p["id"], None) @ cam.R.T + cam.t  # the geometry render_canonical draws
        raw = renderer(*model.fill_holes(vcam, torch.ones_like(vcam)), 112, cam.K)
        out["depth_cm"].append((raw.depth * (raw.mask > 0.5)).numpy())
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["mask"] = (res["depth"] > 0).astype(np.float32)
    return res


def features(coeffs: np.ndarray, renders: Dict[str, np.ndarray], crops: np.ndarray, model: Any) -> Dict[str, np.ndarray]:
    """The FEATURES vectors (N,d) of every photo (see the module docstring)."""
    from recon.coeffs import CoeffLayout
    from recon.identity_eval import centre, coverage_region, image_features, standardise

    p = CoeffLayout.from_model(model).split(torch.from_numpy(np.asarray(coeffs, np.float32)))
    region = coverage_region(renders["mask"], 0.5)
    grey = crops.astype(np.float64).mean(-1)[:, None] / 255.0
    canon = image_features(renders["canonical"], region)
    return {
        "id": p["id"].numpy().astype(np.float64),
        "id_centred": centre(p["id"].numpy()),
        "albedo": centre(p["albedo"].reshape(len(coeffs), -1).numpy()),
        "canonical": centre(canon),
        "canonical_std": centre(standardise(canon)),
        "canonical_lit": centre(image_features(renders["canonical_lit"], region)),
        "canon_shape": centre(image_features(renders["canon_shape"], region)),
        "depth": centre(image_features(renders["depth"], region)),
        "depth_cm": centre(image_features(renders["depth_cm"], coverage_region(renders["mask"], 1.0))),
        "expr": centre(p["expr"].numpy()),
        "photo": centre(standardise(image_features(grey))),
    }


def verify(feats: Dict[str, np.ndarray], labels: np.ndarray, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Per feature: balanced 10-fold (fewer when there are under 10 pairs) accuracy (+- std over folds),
    TAR@FAR=1e-2 and AUC over all pairs, spread (mean per-dimension std) and identity share of the variance."""
    from recognition.eval.metrics import roc_auc, tar_at_far
    from recognition.eval.verification import evaluate_scores
    from recon.identity_eval import all_pairs, balanced_pairs, cosine_scores, identity_fraction, spread

    bi, bj, bsame = balanced_pairs(labels, seed=seed)
    ai, aj, asame = all_pairs(labels)
    out = {}
    for name, f in feats.items():
        ev = evaluate_scores(cosine_scores(f, bi, bj), bsame, n_folds=min(10, bsame.size))
        s_all = cosine_scores(f, ai, aj)
        out[name] = {"accuracy": ev["accuracy"], "accuracy_std": ev["accuracy_std"],
                     "tar_at_far_1e-2": float(tar_at_far(s_all, asame, [1e-2])[1e-2]),
                     "auc": float(roc_auc(s_all, asame)), "spread": spread(f),
                     "identity_share": identity_fraction(f, labels)}
    out["_pairs"] = {"balanced": int(bsame.size), "genuine": int(asame.sum()), "impostor": int((~asame).sum())}
    return out


def real_grid(path: Path, crops: np.ndarray, landmarks: np.ndarray, coeffs: np.ndarray, labels: np.ndarray,
              people: int, photos: int, model: Any, renderer: Any, max_bytes: int = 500_000) -> None:
    """One row per person: for each of `photos` photos, aligned photo | overlay | canonical | depth
    (112 px panels). Saved as PNG (palette-quantised when the full-colour file exceeds max_bytes)."""
    import io

    from PIL import Image

    from lh2face.io import write_bytes_atomic
    from recon.visualize import compose_grid, face_panels, label_panel

    names = list(dict.fromkeys(labels.tolist()))[:people]
    rows = []
    for name in names:
        idx = np.flatnonzero(labels == name)[:photos]
        row = []
        for k in idx:
            render, overlay, canonical, depth, _ = face_panels(model, renderer, torch.from_numpy(coeffs[k]),
                                                               crops[k], landmarks[k], zoom=1, captions=False)
            row += [label_panel(crops[k], name.replace("_", " ")[:16]), overlay, canonical, depth]
        rows.append(row)
    grid = compose_grid(rows, gap=2)
    im = Image.fromarray(grid)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    if buf.tell() > max_bytes:
        buf = io.BytesIO()
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
    write_bytes_atomic(path, buf.getvalue())
    print(f"wrote {path} ({buf.tell() / 1e3:.0f} KB): {len(rows)} people x {photos} photos, "
          "columns per photo: aligned | overlay | canonical | depth")


def markdown(result: Dict[str, Any]) -> str:
    lines = [f"source: {result['source']}", "",
             "| set | feature | accuracy % (chance 50) | TAR@FAR=1e-2 % (chance 1) | AUC (chance 0.5) | spread "
             "| identity share |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for set_name, r in result["sets"].items():
        for feat in FEATURES:
            v = r["verification"][feat]
            lines.append(f"| {set_name} | {feat} | {100 * v['accuracy']:.1f} +- {100 * v['accuracy_std']:.1f} | "
                         f"{100 * v['tar_at_far_1e-2']:.1f} | {v['auc']:.3f} | {v['spread']:.3g} | "
                         f"{v['identity_share']:.2f} |")
    for set_name, r in result["sets"].items():
        pr = r["verification"]["_pairs"]
        extra = f", landmark NME {r['nme_mean']:.4f}, {r['seconds_per_photo']:.3g} s/photo"
        chance = (r["people"] - 1) / max(r["images"] - 1, 1)
        lines.append(f"\n{set_name}: {r['people']} people x {r['photos']} photos; {pr['balanced']} balanced pairs, "
                     f"{pr['genuine']} genuine / {pr['impostor']} impostor pairs in all{extra}; identity share "
                     f"of features that ignore identity ~{chance:.2f}")
    return "\n".join(lines)


def _pct(x: Optional[float]) -> str:
    """A fraction as a percentage with one decimal; None (a NaN stored as null in JSON) as 'nan'."""
    return "nan" if x is None else f"{100 * x:.1f}"


def variant_table(results: Sequence[Tuple[str, Dict[str, Any]]],
                  features: Sequence[str] = ("id_centred", "canonical", "depth")) -> str:
    """One markdown row per (result, set): accuracy % and TAR@FAR=1e-2 % of each feature."""
    head = "| variant | set | " + " | ".join(f"{f} acc / TAR" for f in features) + " | landmark NME |"
    lines = [head, "|" + " --- |" * (len(features) + 3)]
    for name, res in results:
        for set_name, r in res["sets"].items():
            v = r["verification"]
            cells = [f"{_pct(v[f]['accuracy'])} / {_pct(v[f]['tar_at_far_1e-2'])}" if f in v else "-"
                     for f in features]
            lines.append(f"| {name} | {set_name} | " + " | ".join(cells) + f" | {r.get('nme_mean', float('nan')):.4f} |")
    return "\n".join(lines)


_OLD_WEIGHT_NAMES = {"w_id": "prior_id", "w_expr": "prior_expr", "w_albedo": "prior_albedo", "w_landmark": "landmark",
                     "w_photo": "photometric"}  # the FitConfig names before recon.losses.ReconLossWeights


def _parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """--fit KEY=VALUE items -> FitConfig keyword arguments; an L_reco weight is `weights.NAME` (or its old
    FitConfig name w_id / w_expr / w_albedo / w_landmark / w_photo)."""
    from recon.fitting import FIT_WEIGHTS, FitConfig

    fields = {f.name: f for f in dataclasses.fields(FitConfig) if f.name != "weights"}
    wfields = {f.name for f in dataclasses.fields(FIT_WEIGHTS)}
    out: Dict[str, Any] = {}
    weights: Dict[str, float] = {}
    for it in items:
        key, sep, val = it.partition("=")
        key = _OLD_WEIGHT_NAMES.get(key, key)
        wkey = key[len("weights."):] if key.startswith("weights.") else key
        if sep and wkey in wfields:
            weights[wkey] = float(val)
            continue
        if not sep or key not in fields:
            raise ValueError(f"--fit {it!r}: expected KEY=VALUE with KEY one of {sorted(fields)} or "
                             f"weights.NAME with NAME one of {sorted(wfields)}")
        default = getattr(FitConfig(), key)
        out[key] = type(default)(val) if isinstance(default, (int, float)) and not isinstance(default, bool) else val
    if weights:
        out["weights"] = {**dataclasses.asdict(FIT_WEIGHTS), **weights}
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--data", action="append", default=[], metavar="NAME=DIR",
                    help="an ImageFolder to measure (repeatable); default lfw-dev and att from ../shared/data")
    ap.add_argument("--limit", action="append", default=[], metavar="NAME=PxK",
                    help="people x photos per person for a set (default lfw-dev=20x10, att=20x5, others 20x10)")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "out" / "identity_3d",
                    help="landmark and fit caches (default out/identity_3d)")
    ap.add_argument("--variant", default="default", help="name of the fit variant (names its fit cache)")
    ap.add_argument("--fit", action="append", default=[], metavar="KEY=VALUE",
                    help="recon.fitting.FitConfig override for this variant (repeatable), e.g. w_id=2e-5")
    ap.add_argument("--fit-batch", type=int, default=8,
                    help="photos per fit_image call (each keeps its own coefficients; 8 is ~2x faster than 1)")
    ap.add_argument("--regressor", default=None,
                    help="measure a CoeffRegressor (state dict file, or a run folder) instead of the per-photo fit")
    ap.add_argument("--grid", type=Path, default=None, help="also write the real-photo grid PNG (first set)")
    ap.add_argument("--grid-size", default="4x3", metavar="PxK", help="people x photos in the grid")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (and .md beside it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the impostor-pair sample")
    ap.add_argument("--table", nargs="+", default=None, metavar="JSON",
                    help="only print the variant table of earlier results (--out files) and exit")
    ap.add_argument("--table-features", default="id_centred,canonical,depth",
                    help="features (columns) of --table, comma-separated")
    args = ap.parse_args(argv)
    if args.table is not None:
        import json

        try:
            results = [(Path(p).stem, json.loads(Path(p).read_text())) for p in args.table]
        except (OSError, ValueError) as exc:
            print(f"error: --table: {exc}", file=sys.stderr)
            return 2
        print(variant_table(results, args.table_features.split(",")))
        return 0
    torch.set_num_threads(args.threads)

    try:
        sets = {}
        for item in args.data or [f"{k}={v[0]}" for k, v in DEFAULT_SETS.items()]:
            name, sep, d = item.partition("=")
            if not sep or not name:
                raise ValueError(f"--data {item!r}: expected NAME=DIR")
            sets[name] = (Path(d), *DEFAULT_SETS.get(name, (None, 20, 10))[1:])
        for item in args.limit:
            name, _, pk = item.partition("=")
            m = re.fullmatch(r"(\d+)x(\d+)", pk)
            if name not in sets or m is None:
                raise ValueError(f"--limit {item!r}: expected NAME=PxK with NAME one of {sorted(sets)}")
            sets[name] = (sets[name][0], int(m[1]), int(m[2]))
        overrides = _parse_overrides(args.fit)
        overrides.setdefault("threads", args.threads)
        regressor = load_regressor(args.regressor) if args.regressor else None
        gm = re.fullmatch(r"(\d+)x(\d+)", args.grid_size)
        if gm is None:
            raise ValueError(f"--grid-size {args.grid_size!r}: expected PxK, e.g. 4x3")
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from recon.fitting import crops_from_cache
    from recon.identity_eval import labels_from_paths
    from recon.morphable import MorphableModel
    from recon.render import build_renderer

    model, renderer = MorphableModel(), build_renderer("torch")
    source = f"regressor {args.regressor}" if regressor is not None else \
        f"per-photo fit, variant {args.variant} {overrides} (batch {args.fit_batch})"
    result: Dict[str, Any] = {"source": source, "sets": {}}
    for k, (name, (root, people, photos)) in enumerate(sets.items()):
        try:
            paths = select_photos(root, people, photos)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        cache = landmark_cache(paths, args.cache_dir / f"landmarks_{name}.npz")
        bad = [f"{p}: {r}" for p, r, ok in zip(cache.paths, cache.reasons, cache.ok) if not ok]
        for b in bad:
            print(f"  skipped {b}", file=sys.stderr)
        crops, lms, kept = crops_from_cache(cache)
        labels = labels_from_paths(kept)
        t0 = time.perf_counter()
        entry: Dict[str, Any] = {"root": str(root), "people": int(len(set(labels))), "photos": photos,
                                 "images": len(kept), "skipped": bad}
        if regressor is not None:
            from recon.fitting import evaluate_regressor

            coeffs = regress_coefficients(regressor, crops)
            entry["seconds_per_photo"] = (time.perf_counter() - t0) / max(len(kept), 1)
            entry["nme_mean"] = float(np.mean(evaluate_regressor(regressor, crops, lms, model)))
        else:
            try:
                coeffs, nme, secs = fit_coefficients(crops, lms, kept, args.cache_dir / f"fits_{name}_{args.variant}.npz",
                                               overrides, args.fit_batch, model, renderer)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            entry["nme_mean"] = float(np.mean(nme))
            entry["seconds_per_photo"] = float(np.mean(secs))
        renders = canonical_renders(coeffs, model, renderer)
        entry["verification"] = verify(features(coeffs, renders, crops, model), labels, seed=args.seed)
        result["sets"][name] = entry
        if args.grid is not None and k == 0:
            real_grid(args.grid, crops, lms, coeffs, labels, int(gm[1]), int(gm[2]), model, renderer)
    print(markdown(result))
    if args.out is not None:
        from lh2face.io import write_json_atomic, write_text_atomic

        write_json_atomic(args.out, result)
        write_text_atomic(args.out.with_suffix(".md"), markdown(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
