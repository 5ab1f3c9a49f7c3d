"""CoeffRegressor: a small CNN from a face crop to the coefficient vector.

image (B,3,H,W) in [0,1] -> coeffs (B,P) in CoeffLayout order. Two trunks (`trunk=`):
- "pooled": a stem conv and four stages of depthwise-separable blocks (stride 2 each), ~0.1 GFLOP at
  112x112, then an adaptive 4x4 average pool (keeps coarse position, needed for pose and translation)
  and a hidden layer.
- "landmarks": a fully convolutional encoder that predicts 68 landmark heat maps at 1/4 of the input size,
  read out by a soft-argmax (differentiable, sub-pixel), beside a coarse 4x4 context map. The head reads
  the landmarks (centred and scale-normalised, plus their centre and scale) and the pooled context through
  a hidden layer. The coefficient losses train the head only (the trunk's features are detached); the
  trunk is trained by a direct landmark loss on the soft-argmax points (`forward_landmarks`). Direct
  regression from pooled features learned landmarks slowly on our budgets (held-out synthetic NME 0.17
  after 128k samples against 0.046 for the heat maps, docs/RECON.md), and identity shape is carried
  mostly by landmark positions (a linear read-out from ground-truth landmarks reaches 1.3 mm).
Then a zero-initialised output layer. Outputs are mapped slice by slice:
  rotation = max_angle * tanh(raw) (bounded, radians), translation = canonical + scale * raw (cm),
  everything else = raw. The output layer's bias is set so the initial output is exactly
  CoeffLayout.mean_frontal() (the mean face, frontal, canonical distance, standard light).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .coeffs import CoeffLayout


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1, 1))


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Expected position of a softmax over each map: logits (B,K,H,W) -> (B,K,2) (x, y) in [0,1] units of
    the map's width / height (pixel centres at (i + 0.5) / W)."""
    B, K, H, W = logits.shape
    p = torch.softmax(logits.flatten(2), -1).view(B, K, H, W)
    xs = (torch.arange(W, dtype=logits.dtype, device=logits.device) + 0.5) / W
    ys = (torch.arange(H, dtype=logits.dtype, device=logits.device) + 0.5) / H
    return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], -1)


def normalised_landmarks(points: torch.Tensor) -> torch.Tensor:
    """(B,K,2) points -> (B, 2K + 3) features: the points centred and divided by their RMS distance to the
    centre (times sqrt(K), so each coordinate is O(1)), then the centre (x, y) and the RMS scale."""
    centre = points.mean(1, keepdim=True)
    q = points - centre
    scale = q.pow(2).sum(-1).mean(1, keepdim=True).clamp_min(1e-12).sqrt()  # (B,1)
    return torch.cat([(q / scale[:, :, None]).flatten(1), centre.flatten(1), scale], 1)


class LandmarkTrunk(nn.Module):
    """image (B,3,S,S) in [-1,1] -> (features (B,F), landmarks (B,68,2) in [0,1] crop units).

    Encoder to 1/4 resolution (2w channels), a context branch to 1/16 (4w), the context upsampled and
    fused into 68 heat maps at 1/4; the features are the normalised soft-argmax landmarks and the context
    pooled to 4x4. S must be a multiple of 16."""

    def __init__(self, width: int = 32, n_points: int = 68):
        super().__init__()
        w = width
        self.fine = nn.Sequential(_conv_bn(3, w, 3, 2), _separable(w, 2 * w, 1), _separable(2 * w, 2 * w, 2))
        self.context = nn.Sequential(_separable(2 * w, 4 * w, 2), _separable(4 * w, 4 * w, 1),
                                     _separable(4 * w, 4 * w, 2), _separable(4 * w, 4 * w, 1))
        self.heatmaps = nn.Sequential(_separable(6 * w, 4 * w, 1), _separable(4 * w, 4 * w, 1),
                                      nn.Conv2d(4 * w, n_points, 1))
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.n_features = 2 * n_points + 3 + 4 * w * 16

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"the landmark trunk needs an input size that is a multiple of 16, got {tuple(x.shape[-2:])}")
        fine = self.fine(x)
        ctx = self.context(fine)
        up = nn.functional.interpolate(ctx, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        points = soft_argmax(self.heatmaps(torch.cat([fine, up], 1)))
        return torch.cat([normalised_landmarks(points), self.pool(ctx).flatten(1)], 1), points


class CoeffRegressor(nn.Module):
    """image (B,3,H,W) [0,1] -> coefficients (B,layout.size).

    Args:
        layout: coefficient layout (default CoeffLayout() = the default MorphableModel's).
        image_size: nominal input size (any size >= 32 works; the pool is adaptive).
        width: channels of the first stage (doubles per stage, capped at 8 * width).
        trunk: "pooled" or "landmarks" (see the module docstring).
        max_angles: (pitch, yaw, roll) bounds in radians for the tanh-bounded rotation.
        translation_scale: cm per unit of raw translation output (x, y, z).
    """

    def __init__(self, layout: CoeffLayout | None = None, image_size: int = 112, width: int = 32,
                 hidden: int = 256, max_angles: tuple[float, float, float] = (math.pi / 2, math.pi / 2, math.pi / 2),
                 translation_scale: tuple[float, float, float] = (5.0, 5.0, 20.0), trunk: str = "pooled"):
        super().__init__()
        if trunk not in ("pooled", "landmarks"):
            raise ValueError(f"unknown regressor trunk {trunk!r}; choose 'pooled' or 'landmarks'")
        self.layout = layout or CoeffLayout()
        self.image_size = image_size
        self._arch = {"image_size": int(image_size), "width": int(width), "hidden": int(hidden),
                      "max_angles": tuple(float(a) for a in max_angles),
                      "translation_scale": tuple(float(t) for t in translation_scale)}
        if trunk == "landmarks":
            self._arch["trunk"] = trunk  # (absent = "pooled": files saved before this option load unchanged)
            self.trunk = LandmarkTrunk(width)
            self.hidden = nn.Sequential(nn.Linear(self.trunk.n_features, hidden), nn.ReLU(inplace=True))
        else:
            self._init_pooled(width, hidden)
        self.predicts_landmarks = trunk == "landmarks"
        n_head = hidden + (self.trunk.n_features if self.predicts_landmarks else 0)
        self.head = nn.Linear(n_head, self.layout.size)
        mean = self.layout.mean_frontal()
        self.register_buffer("max_angles", torch.tensor(max_angles, dtype=torch.float32))
        self.register_buffer("translation_scale", torch.tensor(translation_scale, dtype=torch.float32))
        self.register_buffer("translation_offset", mean[self.layout.slices["translation"]].clone())
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(self.raw_from_coeffs(mean[None])[0])

    def _init_pooled(self, width: int, hidden: int) -> None:
        c = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.trunk = nn.Sequential(
            _conv_bn(3, c[0], 3, 2),
            _separable(c[0], c[1], 2), _separable(c[1], c[1], 1),
            _separable(c[1], c[2], 2), _separable(c[2], c[2], 1),
            _separable(c[2], c[3], 2), _separable(c[3], c[3], 1),
            _separable(c[3], c[4], 2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c[4] * 16, hidden), nn.ReLU(inplace=True))

    def architecture(self) -> dict:
        """Constructor arguments (layout as its sizes) that rebuild this network (see save_regressor)."""
        return {"layout": {"n_id": self.layout.n_id, "n_expr": self.layout.n_expr,
                           "n_albedo": self.layout.n_albedo}, **self._arch}

    def coeffs_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Map the head's raw output (B,P) to coefficients (B,P)."""
        s = self.layout.slices
        rot = self.max_angles * torch.tanh(raw[:, s["rotation"]])
        trans = self.translation_offset + self.translation_scale * raw[:, s["translation"]]
        return torch.cat([raw[:, : s["rotation"].start], rot, trans, raw[:, s["translation"].stop:]], 1)

    def raw_from_coeffs(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Inverse of coeffs_from_raw (rotations must lie strictly inside +-max_angles)."""
        s = self.layout.slices
        ratio = coeffs[:, s["rotation"]] / self.max_angles
        if ratio.abs().max() >= 1:
            raise ValueError("rotation outside the regressor's max_angles; raise max_angles")
        rot = torch.atanh(ratio)
        trans = (coeffs[:, s["translation"]] - self.translation_offset) / self.translation_scale
        return torch.cat([coeffs[:, : s["rotation"].start], rot, trans, coeffs[:, s["translation"].stop:]], 1)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """image (B,3,H,W) in [0,1] -> (the output layer's input (B,F), landmarks (B,68,2) in input pixels or
        None for the pooled trunk). The landmark trunk's features reach the head detached."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"CoeffRegressor expects images (B,3,H,W) in [0,1], got {tuple(image.shape)}")
        x = image * 2.0 - 1.0
        if not self.predicts_landmarks:
            return self.hidden(self.trunk(x)), None
        f, points = self.trunk(x)
        f = f.detach()
        scale = torch.tensor([image.shape[-1], image.shape[-2]], dtype=points.dtype, device=points.device)
        return torch.cat([self.hidden(f), f], 1), points * scale

    def forward_landmarks(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """image (B,3,H,W) in [0,1] -> (coefficients (B,P), the trunk's 68 landmarks (B,68,2) in input
        pixels, or None for the pooled trunk)."""
        f, points = self.features(image)
        return self.coeffs_from_raw(self.head(f)), points

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) in [0,1] -> (B,P) coefficients."""
        return self.forward_landmarks(image)[0]


# ------------------------------------------------------------------------------------ saved regressors

REGRESSOR_FORMAT = "lh2face-coeff-regressor-v1"
DEFAULT_REGRESSOR = ("regressor", "regressor.pt")  # under the assets folder (lh2face.paths.assets_dir)


class RegressorLoadError(ValueError):
    """A saved regressor file is missing, corrupt or does not fit the coefficient layout."""


def default_regressor_path() -> Path:
    """The bundled pretrained regressor, assets/regressor/regressor.pt (may not exist)."""
    from lh2face.paths import assets_dir

    return assets_dir().joinpath(*DEFAULT_REGRESSOR)


def save_regressor(regressor: CoeffRegressor, path: str | Path, meta: dict | None = None,
                   half: bool = True) -> None:
    """Write `regressor` (architecture + weights, float16 when `half`) atomically with a checksum
    (lh2face.io.save_checkpoint); `meta`: JSON-like facts stored beside it (data, figures)."""
    from lh2face.io import save_checkpoint

    state = {k: (v.half() if half and v.is_floating_point() else v).clone()
             for k, v in regressor.state_dict().items()}
    save_checkpoint(path, {"format": REGRESSOR_FORMAT, "architecture": regressor.architecture(),
                           "state_dict": state, "meta": dict(meta or {})})


def load_pretrained_regressor(path: str | Path | None = None) -> CoeffRegressor:
    """A saved CoeffRegressor (float32, eval mode) from `path` (None or "default": the bundled
    assets/regressor/regressor.pt). Raises RegressorLoadError with one line for a missing or corrupt
    file. The file's meta dict is kept as `regressor.meta`."""
    from lh2face.io import CheckpointError, load_checkpoint

    path = default_regressor_path() if path in (None, "default") else Path(path)
    try:
        data = load_checkpoint(path)
    except CheckpointError as exc:
        raise RegressorLoadError(f"{exc}; train one with `lh2face regressor` or set recon.regressor_init: none") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on garbage
        raise RegressorLoadError(f"{path}: unreadable regressor file ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != REGRESSOR_FORMAT:
        raise RegressorLoadError(f"{path}: not a saved CoeffRegressor (format {REGRESSOR_FORMAT} expected)")
    arch = dict(data["architecture"])
    layout = CoeffLayout(**arch.pop("layout"))
    reg = CoeffRegressor(layout=layout, **arch)
    try:
        reg.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()})
    except RuntimeError as exc:
        raise RegressorLoadError(f"{path}: weights do not match the stored architecture ({exc})") from None
    reg.meta = dict(data.get("meta", {}))
    return reg.eval()


def build_regressor(init: str, options: dict | None = None, image_size: int = 112) -> CoeffRegressor:
    """The regressor joint training starts from (config recon.regressor_init / regressor_options).

    init "none": a fresh CoeffRegressor(image_size=image_size, **options); "default": the bundled
    pretrained regressor, or a fresh one when `options` ask for another architecture (or no asset is
    installed); anything else: a path to a file written by save_regressor (options must then be empty)."""
    options = dict(options or {})
    if init == "none" or (init == "default" and (options or not default_regressor_path().is_file())):
        return CoeffRegressor(CoeffLayout(), image_size=image_size, **options)
    if options and init != "default":
        raise ValueError(f"recon.regressor_options {options} cannot change a loaded regressor ({init}); "
                         "set recon.regressor_init: none to build a fresh one")
    return load_pretrained_regressor(init).train()
