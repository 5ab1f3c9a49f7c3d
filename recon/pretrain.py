"""Pretraining the reconstruction regressor (what `lh2face regressor` runs; the asset in assets/regressor/).

Data: synthetic faces with ground truth (recon.synth, seed `synth_seed`, identities 0..n-1) plus real aligned
crops with 68 dlib landmarks (AT&T, the lfw-dev train people); every slow intermediate (landmark caches,
rendered synthetic pools) is cached under a work folder, so a rerun only trains. Held out: synthetic
identities of another seed (vertex error, mm, neutral identity shape as joint training measures it) and the
lfw-dev test people (landmark NME, inter-ocular).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lh2face.io import PathLike, write_bytes_atomic

from .morphable import MorphableModel
from .synth import SynthOptions, SyntheticFaces


def person_folders(root: PathLike) -> List[Path]:
    """The identity sub-folders of an ImageFolder root, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (an ImageFolder with one folder per person)")
    return sorted(p for p in root.iterdir() if p.is_dir())


def landmark_cache(folders: Sequence[PathLike], cache_path: PathLike, detector: str = "dlib",
                   progress: bool = True) -> Any:
    """A recon.landmarks.cache.LandmarkCache of every image in `folders`, read from `cache_path` when that
    file exists and lists the same images, else detected (tqdm bar) and written there atomically."""
    from tqdm import tqdm

    from .landmarks import DetectorUnavailable, build_detector
    from .landmarks.cache import build_cache, load_cache
    from .photos import list_images

    paths = [str(p) for p in list_images([str(f) for f in folders])]
    cache_path = Path(cache_path)
    if cache_path.is_file():
        cache = load_cache(cache_path)
        if sorted(map(str, cache.paths)) == sorted(paths):
            return cache
    try:
        det = build_detector(detector)
    except (DetectorUnavailable, ImportError) as exc:  # no dlib here (e.g. a GPU machine): the caches must be carried in --work
        raise FileNotFoundError(
            f"{cache_path}: no landmark cache for these {len(paths)} images, and the {detector} detector cannot be "
            f"built here ({exc}); run `lh2face regressor` once where {detector} is installed and carry the "
            f"--work folder's landmarks/ along") from exc
    bar = tqdm(total=len(paths), desc=f"landmarks {cache_path.stem}", unit="img", disable=not progress)
    cache = build_cache(paths, det, detector_name=detector, progress=lambda *a: bar.update())
    bar.close()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache.save(cache_path)
    return cache


def real_crops(root: PathLike, work: PathLike, name: str, size: int, progress: bool = True
               ) -> Tuple[np.ndarray, np.ndarray, List[str], List[str]]:
    """Aligned crops of an ImageFolder's faces with their 68 landmarks (recon.fitting.crops_from_cache).

    Returns images uint8 (M,size,size,3), landmarks float32 (M,68,2) crop pixels, the crops' paths relative
    to `root` ("person/file") and the person folder names (sorted). Kept in WORK/crops_{name}_{size}.npz
    (a few MB), so a machine without the images or dlib (a GPU machine given only the --work folder) reuses
    it: the file is used when `root` is missing or lists the same relative paths; otherwise the crops are
    made from the landmark cache WORK/landmarks/{name}.npz (detected with dlib when that is missing too)."""
    from .fitting import crops_from_cache
    from .photos import list_images

    root, work = Path(root), Path(work)
    crop_path = work / f"crops_{name}_{size}.npz"
    rel = None
    if root.is_dir():
        rel = sorted(Path(p).relative_to(root).as_posix() for p in list_images([str(f) for f in person_folders(root)]))
    if crop_path.is_file():
        with np.load(crop_path, allow_pickle=False) as z:
            if rel is None or list(z["listing"]) == rel:
                return z["image"], z["landmarks"], [str(p) for p in z["paths"]], [str(p) for p in z["people"]]
    if rel is None:
        raise FileNotFoundError(f"{root}: no such folder, and no {crop_path} made from it; pass the image folder "
                                f"or carry the --work folder that holds {crop_path.name}")
    cache = landmark_cache(person_folders(root), work / "landmarks" / f"{name}.npz", progress=progress)
    images, lms, paths = crops_from_cache(cache, size)
    paths = [Path(p).resolve().relative_to(root.resolve()).as_posix() for p in paths]
    people = [p.name for p in person_folders(root)]
    buf = io.BytesIO()
    np.savez_compressed(buf, image=images, landmarks=lms, paths=np.array(paths, dtype=str),
                        people=np.array(people, dtype=str), listing=np.array(rel, dtype=str))
    write_bytes_atomic(crop_path, buf.getvalue())
    return images, lms, paths, people


def _render_chunk(dataset: SyntheticFaces, start: int, stop: int) -> Dict[str, np.ndarray]:
    """Rows start..stop-1 of a SyntheticFaces set as the arrays of `synthetic_arrays`."""
    b = dataset.render_batch(range(start, stop))
    return {"image": (b["image"].permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8),
            "coeffs": b["coeffs"].numpy().astype(np.float32), "landmarks": b["landmarks"].numpy().astype(np.float32),
            "identity": b["identity"].numpy()}


def synthetic_arrays(dataset: SyntheticFaces, cache_path: Optional[PathLike] = None, chunk: int = 32,
                     progress: bool = True, workers: int = 0) -> Dict[str, np.ndarray]:
    """Render a whole SyntheticFaces set to arrays: image uint8 (N,S,S,3), coeffs float32 (N,P), landmarks
    float32 (N,68,2), identity int (N,). Cached in `cache_path` (.npz) keyed by dataset.config().
    workers > 1: chunks rendered by that many spawned processes (same arrays: each row depends only on its
    index)."""
    import json

    from tqdm import tqdm

    key = json.dumps(dataset.config(), sort_keys=True)
    if cache_path is not None and Path(cache_path).is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["config"]) == key:
                return {k: z[k] for k in ("image", "coeffs", "landmarks", "identity")}
    starts = list(range(0, len(dataset), chunk))
    desc = f"rendering {len(dataset)} synthetic faces" + (f" ({workers} processes)" if workers > 1 else "")
    bar = tqdm(total=len(starts), desc=desc, unit="chunk", disable=not progress)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = [pool.submit(_render_chunk, dataset, s, min(s + chunk, len(dataset))) for s in starts]
            parts = []
            for f in futures:
                parts.append(f.result())
                bar.update()
    else:
        parts = []
        for s in starts:
            parts.append(_render_chunk(dataset, s, min(s + chunk, len(dataset))))
            bar.update()
    bar.close()
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in ("image", "coeffs", "landmarks", "identity")}
    if cache_path is not None:
        buf = io.BytesIO()
        np.savez(buf, config=np.array(key), **arrays)
        write_bytes_atomic(cache_path, buf.getvalue())
    return arrays


@torch.no_grad()
def identity_vertex_error(regressor: Optional[torch.nn.Module], images: np.ndarray, coeffs: np.ndarray,
                          model: MorphableModel, batch_size: int = 64) -> np.ndarray:
    """Per image (N,) mean vertex error in mm (recon.losses.vertex_error_mm, similarity-aligned) between the
    neutral identity shapes of the regressed and the ground-truth coefficients; regressor None = the mean
    face (identity 0)."""
    from .coeffs import CoeffLayout
    from .fitting import _as_image_batch
    from .losses import vertex_error_mm

    layout = CoeffLayout.from_model(model)
    if regressor is not None:
        regressor.eval()
    errs = []
    for s in range(0, len(coeffs), batch_size):
        gt = layout.split(torch.as_tensor(coeffs[s:s + batch_size]).float())["id"]
        if regressor is None:
            pred = torch.zeros_like(gt)
        else:
            x = _as_image_batch(images[s:s + batch_size])
            pred = layout.split(regressor(x))["id"]
        errs.append(vertex_error_mm(model.shape(pred, None), model.shape(gt, None)).double().numpy())
    return np.concatenate(errs)


@torch.no_grad()
def hidden_features(regressor: torch.nn.Module, images: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """(N,F) float64 inputs of the regressor's output layer (CoeffRegressor.features; eval mode) for uint8
    images (N,S,S,3)."""
    from .fitting import _as_image_batch

    regressor.eval()
    dev = next(regressor.parameters()).device  # runs where the regressor is; the result is on the CPU
    out = [regressor.features(_as_image_batch(images[s:s + batch_size]).to(dev))[0].double().cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def refit_identity_readout(regressor: torch.nn.Module, synthetic: Dict[str, np.ndarray], model: MorphableModel,
                           ridges: Sequence[float] = (1e-2, 1e-1, 1.0, 10.0, 100.0), val_fraction: float = 0.2
                           ) -> Dict[str, float]:
    """Closed-form ridge read-out of the identity coefficients from the hidden layer (the head's id rows and
    bias), on the synthetic faces with ground truth. Least squares in coefficient space equals least squares
    in vertex space here (one design matrix for every output), so this minimises the gt_shape term directly.
    The ridge is chosen on the last `val_fraction` of the identities; the new read-out is kept only when it
    beats the trained one there. Returns the validation vertex errors (mm) before / after and the ridge."""
    from .coeffs import CoeffLayout

    layout = CoeffLayout.from_model(model)
    ident = np.asarray(synthetic["identity"])
    cut = np.quantile(np.unique(ident), 1.0 - val_fraction)
    tr, va = ident < cut, ident >= cut
    H = hidden_features(regressor, synthetic["image"])
    Y = torch.as_tensor(synthetic["coeffs"]).double()[:, layout.slices["id"]]
    X = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype)], 1)

    def solve(rows: np.ndarray, lam: float) -> torch.Tensor:
        A, B = X[torch.from_numpy(rows)], Y[torch.from_numpy(rows)]
        reg = lam * torch.eye(A.shape[1], dtype=A.dtype)
        reg[-1, -1] = 0.0  # no shrinkage of the bias
        return torch.linalg.solve(A.T @ A + reg, A.T @ B)  # (hidden+1, n_id)

    def err(Wb: torch.Tensor, rows: np.ndarray) -> float:
        from .losses import vertex_error_mm

        pred = (X[torch.from_numpy(rows)] @ Wb).float()
        gt = Y[torch.from_numpy(rows)].float()
        return float(vertex_error_mm(model.shape(pred, None), model.shape(gt, None)).mean())

    head = regressor.head
    s = layout.slices["id"]
    current = torch.cat([head.weight[s].T.double(), head.bias[s][None].double()], 0).cpu()
    before = err(current, va)
    scores = {lam: err(solve(tr, lam), va) for lam in ridges}
    best = min(scores, key=scores.get)
    out = {"readout_val_vertex_error_mm_before": before, "readout_val_vertex_error_mm_after": scores[best],
           "readout_ridge": float(best), "readout_applied": float(scores[best] < before)}
    if scores[best] < before:
        Wb = solve(np.ones(len(ident), bool), best).float()  # refit on every identity
        head.weight[s] = Wb[:-1].T.to(head.weight)
        head.bias[s] = Wb[-1].to(head.bias)
    return out


@torch.no_grad()
def refit_full_readout(regressor: torch.nn.Module, synthetic: Dict[str, np.ndarray],
                       ridges: Sequence[float] = (1.0, 10.0, 100.0, 1000.0), val_fraction: float = 0.2
                       ) -> Dict[str, float]:
    """Closed-form ridge fit of the whole output layer (every coefficient, in the head's raw space:
    CoeffRegressor.raw_from_coeffs) from its input features on the synthetic faces with ground truth.

    For the landmark trunk, whose features are fixed by then: SGD left its head far from the optimum on
    real crops (held-out lfw-dev NME 1.98 from the projected coefficients, against 0.075 after this fit).
    The ridge is chosen by the raw-space squared error on the last `val_fraction` of the identities, then
    the layer is refitted on every identity. Returns that validation error before / after and the ridge."""
    ident = np.asarray(synthetic["identity"])
    cut = np.quantile(np.unique(ident), 1.0 - val_fraction)
    tr, va = torch.from_numpy(ident < cut), torch.from_numpy(ident >= cut)
    H = hidden_features(regressor, synthetic["image"])
    X = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype)], 1)
    Y = regressor.raw_from_coeffs(torch.as_tensor(synthetic["coeffs"]).float().to(regressor.head.bias.device)).double().cpu()

    def solve(rows: torch.Tensor, lam: float) -> torch.Tensor:
        A = X[rows]
        reg = lam * torch.eye(A.shape[1], dtype=A.dtype)
        reg[-1, -1] = 0.0  # no shrinkage of the bias
        return torch.linalg.solve(A.T @ A + reg, A.T @ Y[rows])

    head = regressor.head
    current = torch.cat([head.weight.T.double(), head.bias[None].double()], 0).cpu()
    err = {lam: float(((X[va] @ solve(tr, lam) - Y[va]) ** 2).mean()) for lam in ridges}
    best = min(err, key=err.get)
    Wb = solve(torch.ones(len(X), dtype=torch.bool), best).float()
    head.weight.copy_(Wb[:-1].T.to(head.weight))
    head.bias.copy_(Wb[-1].to(head.bias))
    return {"full_readout_val_mse_before": float(((X[va] @ current - Y[va]) ** 2).mean()),
            "full_readout_val_mse_after": err[best], "full_readout_ridge": float(best)}


def split_people(folders: Sequence[Path], n_train: int) -> Tuple[List[Path], List[Path]]:
    """First n_train folders (sorted) train, the rest are held out."""
    folders = sorted(folders)
    if not 0 < n_train < len(folders):
        raise ValueError(f"cannot hold out people: {len(folders)} folders, {n_train} for training")
    return folders[:n_train], folders[n_train:]


def synth_options(pose: Sequence[float]) -> SynthOptions:
    """SynthOptions with the (yaw, pitch, roll) range in degrees."""
    yaw, pitch, roll = (float(a) for a in pose)
    return SynthOptions(yaw=yaw, pitch=pitch, roll=roll)




@dataclass
class PretrainConfig:
    """Everything that determines the pretrained regressor (stored in the asset's meta)."""

    size: int = 64  # crop size the regressor sees (px)
    width: int = 32
    hidden: int = 256
    trunk: str = "landmarks"  # CoeffRegressor trunk: "pooled" or "landmarks" (heat maps + soft-argmax)
    trunk_landmark_weight: float = 1.0  # the landmark trunk's direct landmark loss (recon.fitting.train_regressor)
    steps: int = 10000
    batch_size: int = 32
    lr: float = 2e-3
    synthetic_fraction: float = 0.5
    synth_identities: int = 20000
    synth_images: int = 1
    synth_workers: int = 0  # processes rendering the synthetic sets (0/1 = this process)
    synth_seed: int = 1  # the demo / study configs draw seed 0: none of their identities is trained on
    pose: Tuple[float, float, float] = (40.0, 20.0, 12.0)  # training (yaw, pitch, roll) range, degrees
    eval_identities: int = 50
    eval_images: int = 2
    eval_seed: int = 2
    eval_pose: Tuple[float, float, float] = (30.0, 15.0, 10.0)  # configs/demo.yaml's synth_options
    lfw_train_people: int = 14
    fit_photos: int = 12  # held-out real crops also fitted per photo (recon.fitting.fit_image) for comparison
    seed: int = 0
    identity_readout: bool = True  # after training, refit the identity read-out in closed form (ridge)
    weights: Dict[str, float] = field(default_factory=dict)  # ReconLossWeights overrides
    time_budget: Optional[float] = None  # seconds of training at most (stops cleanly, fewer steps); None = no limit


def pretrain_regressor(att_root: PathLike, lfw_root: PathLike, work: PathLike, cfg: PretrainConfig,
                       progress: bool = True, log: Any = print, device: Union[str, torch.device] = "cpu"
                       ) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Train a CoeffRegressor on synthetic faces + AT&T + the lfw-dev train people and measure it.

    Returns (regressor, metrics): vertex error (mm) of the regressor and the mean face on the held-out
    synthetic identities; landmark NME of the regressor, the mean frontal face, the mean face placed by
    the 5 points and the per-photo fit on the held-out lfw-dev people; data counts, steps done and seconds.
    device: where the training runs (data preparation and the measurements stay on the CPU)."""
    import time
    from dataclasses import replace

    from .coeffs import CoeffLayout
    from .fitting import REGRESSOR_WEIGHTS, evaluate_regressor, fit_image, train_regressor
    from .losses import ReconLossWeights
    from .regressor import CoeffRegressor

    work, t0 = Path(work), time.perf_counter()
    ai, al, _, _ = real_crops(att_root, work, "att", cfg.size, progress=progress)
    li, ll, lp, lfw_people = real_crops(lfw_root, work, "lfw-dev", cfg.size, progress=progress)
    lfw_train, lfw_test = split_people([Path(p) for p in lfw_people], cfg.lfw_train_people)
    train_names = {p.name for p in lfw_train}
    is_train = np.array([Path(p).parent.name in train_names for p in lp], dtype=bool)
    real_i, real_l = np.concatenate([ai, li[is_train]]), np.concatenate([al, ll[is_train]])
    test_i, test_l = li[~is_train], ll[~is_train]
    log(f"real crops: {len(ai)} AT&T + {int(is_train.sum())} lfw-dev train ({len(lfw_train)} people); "
        f"held out {len(test_i)} lfw-dev crops ({len(lfw_test)} people)")
    train_set = SyntheticFaces(cfg.synth_identities, cfg.synth_images, seed=cfg.synth_seed, image_size=cfg.size,
                               options=synth_options(cfg.pose))
    eval_set = SyntheticFaces(cfg.eval_identities, cfg.eval_images, seed=cfg.eval_seed, image_size=cfg.size,
                              options=synth_options(cfg.eval_pose))
    syn = synthetic_arrays(train_set, work / f"synth_train_{cfg.size}.npz", progress=progress,
                           workers=cfg.synth_workers)
    ev = synthetic_arrays(eval_set, work / f"synth_eval_{cfg.size}.npz", progress=progress, workers=cfg.synth_workers)
    t_data = time.perf_counter() - t0

    model = MorphableModel()
    layout = CoeffLayout.from_model(model)
    torch.manual_seed(cfg.seed)
    reg = CoeffRegressor(layout, image_size=cfg.size, width=cfg.width, hidden=cfg.hidden, trunk=cfg.trunk)
    mean_nme = evaluate_regressor(reg, test_i, test_l, model)  # untrained = the mean frontal face
    weights = replace(REGRESSOR_WEIGHTS, **cfg.weights) if cfg.weights else REGRESSOR_WEIGHTS
    t1 = time.perf_counter()
    reg, history = train_regressor(real_i, real_l, reg, model, steps=cfg.steps, batch_size=cfg.batch_size,
                                   lr=cfg.lr, synthetic=syn, synthetic_fraction=cfg.synthetic_fraction,
                                   weights=weights, seed=cfg.seed, progress=progress, device=device,
                                   time_budget=cfg.time_budget, trunk_landmark_weight=cfg.trunk_landmark_weight)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t_steps = time.perf_counter() - t1
    model = model.cpu()
    readout = refit_full_readout(reg, syn) if cfg.trunk == "landmarks" else {}  # features on the device
    if cfg.identity_readout:
        readout.update(refit_identity_readout(reg, syn, model))
    reg = reg.cpu()
    t_train = time.perf_counter() - t1
    m: Dict[str, Any] = {**readout,
        "vertex_error_mm": float(identity_vertex_error(reg, ev["image"], ev["coeffs"], model).mean()),
        "vertex_error_mm_mean_face": float(identity_vertex_error(None, ev["image"], ev["coeffs"], model).mean()),
        "nme": float(evaluate_regressor(reg, test_i, test_l, model).mean()),
        "nme_mean_frontal_face": float(mean_nme.mean()),
    }
    if getattr(reg, "predicts_landmarks", False):  # the heat-map landmarks themselves, before the coefficient head
        m["nme_trunk_landmarks"] = float(evaluate_regressor(reg, test_i, test_l, model, trunk=True).mean())
    n_fit = min(cfg.fit_photos, len(test_i))
    if n_fit:
        sel = np.linspace(0, len(test_i) - 1, n_fit).round().astype(int)
        fits = [fit_image(test_i[k], test_l[k], model) for k in sel]
        m["nme_fit"] = float(np.mean([f.nme_after[0] for f in fits]))
        m["nme_mean_face_posed"] = float(np.mean([f.nme_before[0] for f in fits]))
        m["nme_regressor_on_fit_subset"] = float(evaluate_regressor(reg, test_i[sel], test_l[sel], model).mean())
        m["fit_seconds_per_photo"] = float(np.mean([f.seconds for f in fits]))
        m["fit_photos"] = int(n_fit)
    m.update(real_train_crops=int(len(real_i)), heldout_real_crops=int(len(test_i)),
             synth_train_images=int(len(syn["coeffs"])), synth_eval_images=int(len(ev["coeffs"])),
             lfw_train_people=[p.name for p in lfw_train], lfw_heldout_people=[p.name for p in lfw_test],
             data_seconds=round(t_data, 1), train_seconds=round(t_train, 1), steps_done=len(history),
             steps_seconds=round(t_steps, 1), stopped_by_time_budget=len(history) < cfg.steps,
             device=str(torch.device(device)),
             final_loss=float(np.mean([h["total"] for h in history[-100:]])) if history else float("nan"),
             weights=asdict(weights), config=json_ready(asdict(cfg)))
    return reg, m


def json_ready(obj: Any) -> Any:
    """Tuples -> lists, recursively (for JSON / the asset's meta)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


_README = """# Pretrained reconstruction regressor

`regressor.pt`: a `recon.regressor.CoeffRegressor` with the {trunk} trunk (input {size} x {size} px aligned crop in [0,1], output the
{n_coeffs} coefficients of the bundled ICT-FaceKit morphable model in `recon.coeffs.CoeffLayout` order), stored
in float16 ({size_kb:.0f} kB) with its architecture, by `recon.regressor.save_regressor`. Load it with
`recon.regressor.load_pretrained_regressor()`; joint training starts from it by default
(`recon.regressor_init: default`; `none` = from scratch; or a path), and `recon.regressor_size: 0` means
its own input size ({size} px).

## How it was made

    {command}

(`--threads 1`, seeded; {train_seconds:.0f} s of training + {data_seconds:.0f} s of data preparation on the
shared 2-core machine. Landmark caches and the rendered synthetic faces are kept under `--work`, so a rerun
only trains.) Loss: `recon.losses.reconstruction_loss` with weights {weights}.

Data:
- {synth_train_images} synthetic faces ({synth_identities} identities x {synth_images}, seed {synth_seed}, pose range
  yaw/pitch/roll +-{pose}) rendered by `recon.synth` from the ICT-FaceKit model (MIT licence) with their
  ground-truth coefficients; the demo and study configs draw seed 0, so none of their identities was trained on.
- {real_train_crops} real aligned crops with 68 dlib landmarks: AT&T / ORL faces (AT&T Laboratories Cambridge,
  free for research with acknowledgement) and the lfw-dev train people ({lfw_train_people}) from Labeled
  Faces in the Wild (Huang et al., UMass Amherst; research use, credit the LFW paper).

## Figures (held out, measured by the command above)

| measure | regressor | mean face | per-photo fit |
|---|---|---|---|
| vertex error, {synth_eval_images} synthetic faces of unseen identities (seed {eval_seed}, pose +-{eval_pose}), mm | **{vertex_error_mm:.2f}** | {vertex_error_mm_mean_face:.2f} | |
| landmark NME (inter-ocular), {heldout_real_crops} lfw-dev crops of the held-out people | **{nme:.4f}** | {nme_mean_frontal_face:.4f} (frontal, canonical place) | |
{fit_row}{trunk_row}
Vertex error: mean distance over the model's vertices between the neutral identity shapes of the regressed and
true coefficients after similarity alignment (`recon.losses.vertex_error_mm`), as `lh2face train` reports it.
Held-out lfw-dev people: {lfw_heldout_people}.
"""


def write_asset(regressor: torch.nn.Module, metrics: Dict[str, Any], out: PathLike, command: str) -> None:
    """OUT/regressor.pt (float16, atomic, metrics in its meta), OUT/metrics.json and OUT/README.md."""
    import json

    from lh2face.io import write_json_atomic, write_text_atomic

    from .regressor import save_regressor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(metrics, command=command)
    save_regressor(regressor, out / "regressor.pt", meta=meta)
    write_json_atomic(out / "metrics.json", meta)
    cfg = metrics["config"]
    fit_row = ""
    if "nme_fit" in metrics:
        fit_row = (f"| landmark NME, {metrics['fit_photos']} of those crops | {metrics['nme_regressor_on_fit_subset']:.4f}"
                   f" | {metrics['nme_mean_face_posed']:.4f} (placed by the 5 points) | {metrics['nme_fit']:.4f} "
                   f"({metrics['fit_seconds_per_photo']:.1f} s per photo) |\n")
    trunk_row = ""
    if "nme_trunk_landmarks" in metrics:
        trunk_row = (f"| landmark NME of the trunk's own 68 heat-map points, the {metrics['heldout_real_crops']} held-out "
                     f"crops | {metrics['nme_trunk_landmarks']:.4f} | | |\n")
    text = _README.format(
        trunk=cfg.get("trunk", "pooled"), trunk_row=trunk_row, size=cfg["size"], n_coeffs=regressor.layout.size, size_kb=(out / "regressor.pt").stat().st_size / 1024,
        command=command, weights=json.dumps({k: v for k, v in metrics["weights"].items() if v}),
        synth_identities=cfg["synth_identities"], synth_images=cfg["synth_images"], synth_seed=cfg["synth_seed"],
        pose="/".join(f"{a:g}" for a in cfg["pose"]), eval_seed=cfg["eval_seed"],
        eval_pose="/".join(f"{a:g}" for a in cfg["eval_pose"]), lfw_train_people=", ".join(metrics["lfw_train_people"]),
        lfw_heldout_people=", ".join(metrics["lfw_heldout_people"]), fit_row=fit_row,
        **{k: metrics[k] for k in ("train_seconds", "data_seconds", "synth_train_images", "real_train_crops",
                                   "synth_eval_images", "vertex_error_mm", "vertex_error_mm_mean_face", "nme",
                                   "nme_mean_frontal_face", "heldout_real_crops")})
    write_text_atomic(out / "README.md", text)
