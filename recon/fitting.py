"""Per-image 3DMM fitting by analysis-by-synthesis, and regressor training on real photos.

`fit_image(image, landmarks68)` optimises identity, expression, albedo, pose and SH light of the
bundled morphable model so that its render matches a photo (usually the aligned crop made by
recon.photos). Coarse to fine, with Adam:

  stage "pose"      landmarks only, rotation + translation (the shape is the mean face);
  stage "shape"     landmarks + priors, adds identity and expression;
  stage "photo"     masked photometric + landmarks + priors, everything including albedo and light
                    (light starts from a linear least-squares fit to the photo).

Units: images float RGB in [0,1] (B,3,H,W); landmarks pixels (B,68,2) in the DESIGN.md convention;
every loss is recon.losses.reconstruction_loss (one L_reco composer) with FitConfig.weights (default
FIT_WEIGHTS): the landmark term is the mean squared point error divided by the squared inter-ocular
distance (so NME^2), the photometric term the mean per-pixel RGB distance inside the rendered face mask.

`train_regressor(images, landmarks, ...)` trains recon.regressor.CoeffRegressor on real aligned crops
(`crops_from_cache`) and synthetic faces with ground truth, with the same composer and REGRESSOR_WEIGHTS;
`lh2face regressor` (recon.pretrain) runs it to make the bundled pretrained regressor.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from . import losses as L
from .camera import intrinsics, project, solve_translation
from .coeffs import CoeffLayout
from .face import render_face
from .geometry import model_to_camera
from .lighting import sh_basis
from .morphable import MorphableModel

ArrayLike = Union[np.ndarray, Tensor]

# iBUG-68 landmark weights: jaw contour points are less reliable (silhouette), the inner face more.
_LM_WEIGHTS = np.ones(68, dtype=np.float32)
_LM_WEIGHTS[0:17] = 0.5
_LM_WEIGHTS[27:36] = 2.0  # nose
_LM_WEIGHTS[60:68] = 2.0  # inner lips

# The per-photo fit's L_reco weights: landmarks on NME^2, priors on sum(c^2) (coefficients ~ N(0,1)),
# light on the colour spread of the SH coefficients (keeps it near white).
FIT_WEIGHTS = L.ReconLossWeights(photometric=1.0, landmark=50.0, prior_id=2e-4, prior_expr=1e-3,
                                 prior_albedo=3e-4, prior_expr_range=10.0, light=1e-2)


@dataclass
class FitConfig:
    """Steps, learning rates and loss weights of `fit_image`.

    Defaults take ~3-4 s per image at 112 or 224 px on one CPU thread (photometric steps ~30 ms each,
    measured on the shared 2-core machine at load ~8); the first fit in a process adds the renderer's
    kernel loading (~2 s)."""

    steps_pose: int = 30  # L-BFGS steps (rigid pose on the landmarks)
    steps_shape: int = 100  # Adam steps from here on
    steps_photo: int = 80
    lr_pose: float = 0.01  # rotation, radians per step
    lr_translation: float = 0.05  # translation, cm per step in x, y and 10 cm per step in z
    lr_shape: float = 0.05
    lr_albedo: float = 0.05
    lr_light: float = 0.03
    # L_reco weights (recon.losses.reconstruction_loss); the pose stage uses the landmark weight only
    weights: L.ReconLossWeights = field(default_factory=lambda: replace(FIT_WEIGHTS))
    landmark_weights: Optional[Sequence[float]] = None  # (68,), default _LM_WEIGHTS
    seed: int = 0
    # torch intra-op threads during the fit (restored afterwards). The tensors are small, so one thread
    # is as fast as several on an idle machine and far faster on a busy one (measured 35 ms vs 810 ms
    # per photometric step with 2 threads on 2 oversubscribed cores); None leaves torch's setting alone.
    threads: Optional[int] = 1

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):  # FitConfig(**asdict(cfg)) passes the weights as a dict
            self.weights = L.ReconLossWeights(**self.weights)


@dataclass
class FitResult:
    """Output of `fit_image` (batch B).

    coeffs (B,P) detached, CoeffLayout order; landmarks2d (B,68,2) fitted model landmarks in pixels;
    nme_before / nme_after (B,) landmark error of the initial (mean face, solved pose) and fitted model
    against the target landmarks, normalised by the inter-ocular distance (outer eye corners);
    losses: final value of each term; history: one dict per step (step, stage, seconds since the
    start of the fit, total and each term, evaluated at the start of the step); render: final
    dict(image (B,3,H,W), mask (B,1,H,W), depth (B,1,H,W)) detached; seconds: wall time.
    """

    coeffs: Tensor
    landmarks2d: Tensor
    nme_before: np.ndarray
    nme_after: np.ndarray
    losses: Dict[str, float]
    history: List[Dict[str, Any]]
    render: Dict[str, Tensor]
    layout: CoeffLayout
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- metrics


def landmark_nme(pred: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Normalised mean error (recon.losses.landmark_nme): mean over the 68 points of
    |pred - target| / inter-ocular distance of target (outer eye corners). Arrays or tensors,
    (68,2) or (B,68,2) -> float64 (B,)."""
    p = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred, dtype=torch.float32)
    t = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target, dtype=torch.float32)
    if p.dim() == 2:
        p, t = p[None], t[None]
    if p.shape != t.shape or p.shape[-2:] != (68, 2):
        raise ValueError(f"pred and target must both be (B,68,2), got {tuple(p.shape)} and {tuple(t.shape)}")
    return L.landmark_nme(p.detach(), t.detach()).cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------- helpers


def _as_image_batch(image: ArrayLike) -> Tensor:
    """uint8 (H,W,3) / (B,H,W,3) array or float (3,H,W) / (B,3,H,W) tensor in [0,1] -> float (B,3,H,W)."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if t.dim() == 2:
            t = t[..., None].expand(-1, -1, 3)
        if t.dim() == 3 and t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
            t = t.permute(2, 0, 1)
        elif t.dim() == 4 and t.shape[-1] in (1, 3):
            t = t.permute(0, 3, 1, 2)
    else:
        t = image.float()
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"image must be (H,W,3) uint8 or (B,3,H,W) float in [0,1], got shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.contiguous()


def _as_landmarks(landmarks: ArrayLike, batch: int) -> Tensor:
    lm = torch.as_tensor(np.asarray(landmarks) if not torch.is_tensor(landmarks) else landmarks,
                         dtype=torch.float32)
    if lm.dim() == 2:
        lm = lm[None]
    if lm.shape != (batch, 68, 2):
        raise ValueError(f"landmarks must be (68,2) or (B,68,2) pixels with B={batch}, got {tuple(lm.shape)}")
    if not torch.isfinite(lm).all():
        raise ValueError("landmarks contain NaN/inf (an image without a detected face?)")
    return lm


class _Forward:
    """coefficients -> camera-space vertices, landmarks and renders (model + camera + SH + renderer)."""

    def __init__(self, model: MorphableModel, renderer: Any, K: Tensor, image_size: Tuple[int, int]):
        self.model, self.renderer, self.K, self.size = model, renderer, K, image_size
        self.layout = CoeffLayout.from_model(model)

    def landmarks(self, p: Dict[str, Tensor]) -> Tensor:
        """Project the 68 landmark vertices (yaw-dependent jaw contour) -> (B,68,2) pixels.
        Only the landmark candidate vertices are evaluated, so this is cheap."""
        m = self.model
        idx = m.landmark_indices(p["rotation"][:, 1])  # (B,68)
        base = m.mean[idx]  # (B,68,3)
        if m.n_id:
            base = base + torch.einsum("bk,kbnc->bnc", p["id"], m.id_basis[:, idx])
        if m.n_expr:
            base = base + torch.einsum("bk,kbnc->bnc", p["expr"], m.expr_basis[:, idx])
        cam = model_to_camera(base, p["rotation"], p["translation"])
        return project(cam, self.K)

    def render(self, p: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Full render through recon.face.render_face (yaw-dependent jaw contour for the landmarks)."""
        coeffs = self.layout.join(p)
        return render_face(self.model, self.renderer, coeffs, self.size, K=self.K, layout=self.layout,
                           dynamic_contour=True)


def _initial_pose(model: MorphableModel, lm5: Tensor, K: Tensor) -> Tensor:
    """Translation (B,3) putting the frontal mean face's 5 alignment points on the detected ones."""
    pts = model.alignment_points(model.mean[None]).double()[0].cpu().numpy()
    return torch.tensor(np.stack([solve_translation(pts, q, K.double().cpu().numpy())
                                  for q in lm5.double().cpu().numpy()]), dtype=torch.float32)


def _landmarks5(lm68: Tensor) -> Tensor:
    return torch.stack([lm68[:, 36:42].mean(1), lm68[:, 42:48].mean(1), lm68[:, 30], lm68[:, 48], lm68[:, 54]], 1)


@torch.no_grad()
def _solve_light(fwd: _Forward, p: Dict[str, Tensor], image: Tensor, ridge: float = 1e-3) -> Tensor:
    """Least-squares SH light (B,27) for the current shape/albedo: image ~ albedo * (A Y(n)) . l per channel."""
    m = fwd.model
    verts = m.shape(p["id"], p["expr"])
    cam = model_to_camera(verts, p["rotation"], p["translation"])
    normals = m.vertex_normals(cam)
    alb = m.albedo(p["albedo"])
    out = fwd.renderer(cam, m.triangles, torch.cat([alb, normals], -1), fwd.size, fwd.K)
    B = image.shape[0]
    lights = []
    for b in range(B):
        mask = out.mask[b, 0] > 0.5
        if int(mask.sum()) < 20:
            lights.append(p["light"][b])
            continue
        a = out.image[b, :3][:, mask].T  # (N,3) albedo
        n = torch.nn.functional.normalize(out.image[b, 3:6][:, mask].T, dim=-1)
        Y = sh_basis(n) * torch.tensor([1.0, 2 / 3, 2 / 3, 2 / 3, 0.25, 0.25, 0.25, 0.25, 0.25])  # band factors / pi
        rows = []
        for c in range(3):
            A = a[:, c:c + 1] * Y  # (N,9)
            y = image[b, c][mask]
            lhs = A.T @ A + ridge * A.shape[0] * torch.eye(9)
            rows.append(torch.linalg.solve(lhs, A.T @ y))
        lights.append(torch.stack(rows).reshape(27))
    return torch.stack(lights)


# ------------------------------------------------------------------------------------------------ fit


def fit_image(
    image: ArrayLike,
    landmarks68: ArrayLike,
    model: Optional[MorphableModel] = None,
    renderer: Any = None,
    config: Optional[FitConfig] = None,
    K: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    init: Optional[Tensor] = None,
    **overrides: Any,
) -> FitResult:
    """Fit the morphable model to one image (or a batch of same-size images).

    image: uint8 (H,W,3) or float (B,3,H,W) in [0,1]; landmarks68: (68,2)/(B,68,2) pixels of that image;
    model: MorphableModel (default: bundled); renderer: recon.render.build_renderer() by default;
    config / overrides: FitConfig fields (e.g. steps_photo=50); K: (3,3) intrinsics (default
    recon.camera.intrinsics for the image size); mask: optional (B,1,H,W) extra photometric mask
    (e.g. skin); init: optional (B,P) starting coefficients (e.g. a regressor's output; pose is then
    taken from it instead of being solved). Returns a FitResult.
    """
    cfg = FitConfig(**{**asdict(config or FitConfig()), **overrides})
    if cfg.threads is None:
        return _fit_image(image, landmarks68, model, renderer, cfg, K, mask, init)
    before = torch.get_num_threads()
    torch.set_num_threads(int(cfg.threads))
    try:
        return _fit_image(image, landmarks68, model, renderer, cfg, K, mask, init)
    finally:
        torch.set_num_threads(before)


def _initial_params(init: Optional[Tensor], layout: CoeffLayout, model: MorphableModel, target: Tensor,
                    K: Tensor) -> Dict[str, Tensor]:
    """The fit's parameters by coefficient slice (albedo flattened), requiring grad: `init` (B,P) when given,
    else the mean frontal face placed by the 5 landmarks of `target` (B,68,2)."""
    B = target.shape[0]
    if init is not None:
        p0 = {k: v.detach().clone().float() for k, v in layout.split(torch.as_tensor(init).reshape(B, -1)).items()}
        p0["albedo"] = p0["albedo"].reshape(B, -1)
    else:
        p0 = {k: v.clone() for k, v in layout.split(layout.mean_frontal(B)).items()}
        p0["albedo"] = p0["albedo"].reshape(B, -1)
        p0["translation"] = _initial_pose(model, _landmarks5(target), K)
    return {k: v.clone().requires_grad_(True) for k, v in p0.items()}


def _stage_optimizer(opt_groups: List[Dict[str, Any]], steps: int, lbfgs: bool):
    """(optimizer, scheduler or None) of one fitting stage: L-BFGS (few parameters, smooth landmark loss:
    quasi-Newton converges in tens of steps) or Adam with a linear warm-up over up to 10 steps (Adam's first
    steps move every parameter by ~lr, which would knock the pose off), then cosine decay to 5 % (a
    constant rate keeps jittering)."""
    if lbfgs:
        opt = torch.optim.LBFGS([t for g in opt_groups for t in g["params"]], lr=1.0, max_iter=1, max_eval=25,
                                history_size=20, line_search_fn="strong_wolfe")
        return opt, None
    opt = torch.optim.Adam(opt_groups)
    warm = min(10, max(1, steps // 5))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps))))
    return opt, sched


def _fit_image(image: ArrayLike, landmarks68: ArrayLike, model: Optional[MorphableModel], renderer: Any,
               cfg: FitConfig, K: Optional[Tensor], mask: Optional[Tensor], init: Optional[Tensor]) -> FitResult:
    t0 = time.perf_counter()
    model = model if model is not None else MorphableModel()
    if renderer is None:
        from .render import build_renderer

        renderer = build_renderer("torch")
    img = _as_image_batch(image)
    B, _, H, W = img.shape
    target = _as_landmarks(landmarks68, B)
    K = intrinsics((H, W)) if K is None else torch.as_tensor(K, dtype=torch.float32)
    layout = CoeffLayout.from_model(model)
    fwd = _Forward(model, renderer, K, (H, W))
    torch.manual_seed(cfg.seed)

    params = _initial_params(init, layout, model, target, K)
    w_lm = torch.tensor(cfg.landmark_weights if cfg.landmark_weights is not None else _LM_WEIGHTS,
                        dtype=torch.float32)
    with torch.no_grad():
        nme_before = landmark_nme(fwd.landmarks(params), target)
    # translation is optimised in units of 10 cm for z, so one lr suits rotation and translation
    t_scale = torch.tensor([1.0, 1.0, 10.0])
    history: List[Dict[str, Any]] = []

    w_pose = L.ReconLossWeights(photometric=0.0, landmark=cfg.weights.landmark, prior_id=0.0, prior_expr=0.0,
                                prior_albedo=0.0, prior_expr_range=0.0)

    def run_stage(stage: str, steps: int, groups: List[Tuple[List[str], float]], photo: bool,
                  lbfgs: bool = False) -> None:
        if steps <= 0:
            return
        # translation is re-parametrised: p["translation"] = base + delta * t_scale
        base_t = params["translation"].detach().clone()
        delta = torch.zeros_like(base_t, requires_grad=True)
        opt_groups = []
        for names, lr in groups:
            tensors = [delta if n == "translation" else params[n] for n in names]
            opt_groups.append({"params": tensors, "lr": lr})
        opt, sched = _stage_optimizer(opt_groups, steps, lbfgs)

        def evaluate() -> Tuple[Tensor, Dict[str, Tensor]]:
            p = dict(params)
            p["translation"] = base_t + delta * t_scale
            rendered = fwd.render(p) if photo else {"landmarks2d": fwd.landmarks(p)}
            return L.reconstruction_loss(rendered, img, layout.join(p), layout,
                                         w_pose if stage == "pose" else cfg.weights, landmarks=target,
                                         landmark_weights=w_lm, mask=mask)

        for step in range(steps):
            record: Dict[str, Any] = {}

            def closure() -> Tensor:
                opt.zero_grad(set_to_none=True)
                total, terms = evaluate()
                total.backward()
                if not record:  # the loss at the start of this step
                    record.update(total=float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()})
                return total

            opt.step(closure)
            if sched is not None:
                sched.step()
            history.append({"step": len(history), "stage": stage, "seconds": time.perf_counter() - t0, **record})
        with torch.no_grad():
            params["translation"].copy_(base_t + delta * t_scale)

    rot, trans = (["rotation"], cfg.lr_pose), (["translation"], cfg.lr_translation)
    run_stage("pose", cfg.steps_pose, [rot, trans], photo=False, lbfgs=True)
    run_stage("shape", cfg.steps_shape, [rot, trans, (["id", "expr"], cfg.lr_shape)], photo=False)
    if cfg.steps_photo > 0:
        with torch.no_grad():
            params["light"].copy_(_solve_light(fwd, params, img))
        run_stage("photo", cfg.steps_photo,
                  [(["rotation"], cfg.lr_pose * 0.5), (["translation"], cfg.lr_translation * 0.5),
                   (["id", "expr"], cfg.lr_shape * 0.5), (["albedo"], cfg.lr_albedo), (["light"], cfg.lr_light)],
                  photo=True)

    with torch.no_grad():
        final = fwd.render(params)
        coeffs = layout.join({k: v.detach() for k, v in params.items()})
    last = history[-1] if history else {}
    return FitResult(
        coeffs=coeffs,
        landmarks2d=final["landmarks2d"].detach(),
        nme_before=nme_before,
        nme_after=landmark_nme(final["landmarks2d"], target),
        losses={k: v for k, v in last.items() if k not in ("step", "stage")},
        history=history,
        render={k: final[k].detach() for k in ("image", "mask", "depth")},
        layout=layout,
        seconds=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------------------- regressor on photos


def crops_from_cache(cache: Any, size: int = 112) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Aligned crops of the cached faces: every ok row of a LandmarkCache (or a cache file path) is
    read, aligned with its 5 points to the ArcFace template scaled to `size`, and its 68 landmarks are
    mapped into the crop. Returns images uint8 (M,size,size,3), landmarks (M,68,2) crop pixels, paths.
    Rows whose file can no longer be read are left out (with a warning)."""
    import warnings

    from lh2face.align import align_face
    from lh2face.io import ImageReadError, read_image

    from .landmarks.cache import load_cache

    if not hasattr(cache, "landmarks68"):
        cache = load_cache(cache)
    imgs, lms, paths = [], [], []
    for k in np.flatnonzero(cache.ok):
        try:
            image = read_image(str(cache.paths[k]))
        except (ImageReadError, OSError) as exc:
            warnings.warn(f"skipping {cache.paths[k]}: {exc}")
            continue
        crop, M = align_face(image, cache.landmarks5[k], size=size, return_matrix=True)
        imgs.append(crop)
        lms.append(cache.landmarks68[k] @ M[:, :2].T + M[:, 2])
        paths.append(str(cache.paths[k]))
    if not imgs:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 68, 2), np.float32), []
    return np.stack(imgs), np.stack(lms).astype(np.float32), paths


@torch.no_grad()
def evaluate_regressor(regressor: torch.nn.Module, images: ArrayLike, landmarks: ArrayLike,
                       model: Optional[MorphableModel] = None, batch_size: int = 32, trunk: bool = False) -> np.ndarray:
    """Landmark NME (B,) of one regressor pass: project the predicted model's landmarks (no fitting).
    trunk: the NME of the landmarks the regressor's trunk predicts itself (CoeffRegressor(trunk="landmarks"))."""
    model = model if model is not None else MorphableModel()
    img = _as_image_batch(images)
    lm = _as_landmarks(landmarks, img.shape[0])
    K = intrinsics(tuple(img.shape[-2:]))
    fwd = _Forward(model, None, K, tuple(img.shape[-2:]))
    was_training = regressor.training
    regressor.eval()
    out = []
    for s in range(0, img.shape[0], batch_size):
        coeffs, points = _regress(regressor, img[s:s + batch_size])
        if trunk:
            if points is None:
                raise ValueError("this regressor's trunk predicts no landmarks (trunk='pooled')")
            out.append(landmark_nme(points, lm[s:s + batch_size]))
            continue
        p = fwd.layout.split(coeffs)
        p["albedo"] = p["albedo"].reshape(p["albedo"].shape[0], -1)
        out.append(landmark_nme(fwd.landmarks(p), lm[s:s + batch_size]))
    regressor.train(was_training)
    return np.concatenate(out)


# Regressor training: landmarks + tiny priors on real crops; on synthetic faces also the ground-truth
# coefficients and, above all, the identity shape (gt_shape, cm^2), which is what the vertex error measures.
REGRESSOR_WEIGHTS = L.ReconLossWeights(photometric=0.0, landmark=50.0, prior_id=2e-4, prior_expr=1e-3,
                                       prior_albedo=3e-4, prior_expr_range=10.0, light=0.0, gt_coeffs=1.0,
                                       gt_shape=20.0)  # gt_shape on cm^2: ~0.36 cm^2 for the mean face


def train_regressor(
    images: ArrayLike,
    landmarks: ArrayLike,
    regressor: Optional[torch.nn.Module] = None,
    model: Optional[MorphableModel] = None,
    renderer: Any = None,
    steps: int = 500,
    batch_size: int = 16,
    lr: float = 1e-3,
    synthetic: Any = None,
    synthetic_fraction: float = 0.5,
    weights: Optional[L.ReconLossWeights] = None,
    seed: int = 0,
    threads: Optional[int] = None,
    progress: bool = False,
    device: Union[str, torch.device] = "cpu",
    callback: Any = None,
    time_budget: Optional[float] = None,
    trunk_landmark_weight: float = 1.0,
) -> Tuple[torch.nn.Module, List[Dict[str, float]]]:
    """Train a CoeffRegressor on real aligned crops (self-supervised) and optionally synthetic faces.

    images: uint8 (N,S,S,3) or float (N,3,S,S) aligned crops (e.g. from `crops_from_cache`);
    landmarks: (N,68,2) crop pixels. Loss: recon.losses.reconstruction_loss with `weights` (default
    REGRESSOR_WEIGHTS). Real crops give the landmark loss and the priors, and the masked photometric loss
    of the re-render (recon.face.render_face) when weights.photometric > 0. `synthetic`: a dict of arrays
    image / coeffs / landmarks (recon.pretrain.synthetic_arrays renders one);
    `synthetic_fraction` of each batch then comes from it, with the ground-truth terms (gt_coeffs,
    gt_shape) added. Adam with a cosine decay of the rate to 5 %. threads: torch intra-op threads while
    training (restored afterwards). Returns (regressor in eval mode, history: one dict of floats per step,
    keys total, real/<term>, synth/<term>). device: where to train (model, morphable model, renderer and the
    image arrays are moved there once; each step's batch is indexed there);
    callback(step, regressor): called after every optimiser step (e.g. to evaluate now and then).
    time_budget: seconds of training after which it stops cleanly (fewer steps; the history's length says
    how many ran); the cosine decay then follows max(step / steps, elapsed / time_budget), so the rate has
    decayed when the budget ends. None = no limit.
    trunk_landmark_weight: for a regressor whose trunk predicts landmarks (CoeffRegressor(trunk="landmarks")),
    the weight of its direct landmark loss (`trunk_landmark_loss`, on real and synthetic rows alike); the
    logged term is `trunk_landmark`.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _train_regressor(images, landmarks, regressor, model, renderer, steps, batch_size, lr, synthetic,
                                synthetic_fraction, weights or REGRESSOR_WEIGHTS, seed, progress, torch.device(device),
                                callback, time_budget, trunk_landmark_weight)
    finally:
        torch.set_num_threads(before)


def _train_regressor(images, landmarks, regressor, model, renderer, steps, batch_size, lr, synthetic,
                     synthetic_fraction, weights, seed, progress, device, callback, time_budget=None,
                     trunk_landmark_weight=1.0):
    from tqdm import tqdm

    from .regressor import CoeffRegressor

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = (model if model is not None else MorphableModel()).to(device)
    img = _as_image_batch(images)
    N, _, H, W = img.shape
    if N == 0:
        raise ValueError("train_regressor needs at least one real image (does the landmark cache hold any face?)")
    lm = _as_landmarks(landmarks, N).to(device)
    img = img.to(device)
    layout = CoeffLayout.from_model(model)
    regressor = (regressor if regressor is not None else CoeffRegressor(layout=layout, image_size=H)).to(device)
    if getattr(regressor, "layout", layout) != layout:
        raise ValueError(f"regressor layout {regressor.layout} does not match the model's {layout}")
    if weights.photometric > 0 and renderer is None:
        from .render import build_renderer

        renderer = build_renderer("torch")
    fwd = _Forward(model, renderer, intrinsics((H, W)).to(device), (H, W))
    lm_w = torch.from_numpy(_LM_WEIGHTS).to(device)
    n_synth = 0 if synthetic is None else min(batch_size - 1, max(1, round(batch_size * synthetic_fraction)))
    n_syn_total = 0 if synthetic is None else len(synthetic["coeffs"])
    syn_dev = None if synthetic is None else _synthetic_on_device(synthetic, device)
    opt = torch.optim.Adam(regressor.parameters(), lr=lr)
    regressor.train()
    history: List[Dict[str, Any]] = []
    bar = tqdm(range(steps), desc="regressor", unit="step", disable=not progress, mininterval=2.0)
    t_start = time.perf_counter()
    for step in bar:
        elapsed = time.perf_counter() - t_start
        if time_budget is not None and elapsed >= time_budget:
            break
        frac = max(step / steps, elapsed / time_budget if time_budget else 0.0)
        for g in opt.param_groups:  # cosine decay to 5 % over the steps or the time budget, whichever ends first
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        idx = torch.randint(0, N, (min(batch_size - n_synth, N),), generator=gen).to(device)
        x, target = img[idx], lm[idx]
        if n_synth:
            sidx = torch.randint(0, n_syn_total, (n_synth,), generator=gen).to(device)
            sx, sc, sl = _synthetic_rows(syn_dev, sidx)
            coeffs_all, points = _regress(regressor, torch.cat([x, sx.to(x)]))  # one pass: BatchNorm sees both
            coeffs, scoeffs = coeffs_all[: len(idx)], coeffs_all[len(idx):]
            all_targets = torch.cat([target, sl.to(target)])
        else:
            coeffs, points = _regress(regressor, x)
            all_targets = target
        if weights.photometric > 0:
            rendered = render_face(model, renderer, coeffs, (H, W), K=fwd.K, layout=layout, dynamic_contour=True)
        else:
            rendered = {"landmarks2d": fwd.landmarks(_split_flat(layout, coeffs))}
        total, terms = L.reconstruction_loss(rendered, x, coeffs, layout, weights, landmarks=target, model=model,
                                             landmark_weights=lm_w)
        logs = {f"real/{k}": v.detach() for k, v in terms.items()}
        if n_synth:
            s_fwd = fwd if sx.shape[-2:] == (H, W) else _Forward(model, None, intrinsics(tuple(sx.shape[-2:])).to(device),
                                                                  tuple(sx.shape[-2:]))
            s_total, s_terms = L.reconstruction_loss({"landmarks2d": s_fwd.landmarks(_split_flat(layout, scoeffs))},
                                                     None, scoeffs, layout, weights, landmarks=sl, gt_coeffs=sc,
                                                     model=model)
            total = (total * len(idx) + s_total * n_synth) / (len(idx) + n_synth)
            logs.update({f"synth/{k}": v.detach() for k, v in s_terms.items()})
        if points is not None and trunk_landmark_weight > 0:
            t_lm = trunk_landmark_weight * trunk_landmark_loss(points, all_targets, H)
            total = total + t_lm
            logs["trunk_landmark"] = t_lm.detach()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        history.append({"step": step, "total": total.detach(), **logs})  # tensors: no device sync per step
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{float(history[-1]['total']):.3f}")
        if callback is not None:
            callback(step, regressor)
    bar.close()
    regressor.eval()
    return regressor, _history_to_floats(history)


def _history_to_floats(history: List[Dict[str, Any]]) -> List[Dict[str, float]]:
    """The per-step logs (0-d tensors, maybe on a device) as floats, with one transfer per key."""
    if not history:
        return []
    keys = [k for k in history[0] if k != "step"]
    cols = {k: torch.stack([h[k] for h in history]).double().cpu().tolist() for k in keys}
    return [{"step": h["step"], **{k: cols[k][i] for k in keys}} for i, h in enumerate(history)]


def _regress(regressor: torch.nn.Module, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    """(coefficients, the trunk's landmarks or None): CoeffRegressor.forward_landmarks when it has one."""
    fwd = getattr(regressor, "forward_landmarks", None)
    return fwd(x) if fwd is not None else (regressor(x), None)


def trunk_landmark_loss(points: Tensor, target: Tensor, size: int) -> Tensor:
    """Mean Euclidean distance between predicted and target landmarks (B,68,2), both in pixels of a `size`
    px crop, in units of the crop size (0-d tensor)."""
    return ((points - target.to(points)) / float(size)).norm(dim=-1).mean()


def _synthetic_on_device(synthetic: Dict[str, Any], device: torch.device) -> Dict[str, Tensor]:
    """The synthetic arrays as tensors on `device`: image kept uint8 (N,S,S,3) or float (N,3,S,S)."""
    out = {}
    for k in ("image", "coeffs", "landmarks"):
        v = synthetic[k]
        t = v if torch.is_tensor(v) else torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(device) if k == "image" else t.float().to(device)
    return out


def _synthetic_rows(syn: Dict[str, Tensor], rows: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(images (B,3,S,S) float [0,1], coeffs (B,P), landmarks (B,68,2)) rows of `_synthetic_on_device`."""
    x = syn["image"][rows]
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float() / 255.0
    return x.contiguous(), syn["coeffs"][rows], syn["landmarks"][rows]


def _split_flat(layout: CoeffLayout, coeffs: Tensor) -> Dict[str, Tensor]:
    p = layout.split(coeffs)
    p["albedo"] = p["albedo"].reshape(coeffs.shape[0], -1)
    return p
