"""CoeffRegressor: a small CNN from a face crop to the coefficient vector.

image (B,3,H,W) in [0,1] -> coeffs (B,P) in CoeffLayout order. Trunk: a stem conv and four stages of
inverted-residual-free depthwise-separable blocks (stride 2 each), ~0.1 GFLOP at 112x112, then an
adaptive 4x4 average pool (keeps coarse position, needed for pose and translation), a hidden layer and
a zero-initialised output layer. Outputs are mapped slice by slice:
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


class CoeffRegressor(nn.Module):
    """image (B,3,H,W) [0,1] -> coefficients (B,layout.size).

    Args:
        layout: coefficient layout (default CoeffLayout() = the default MorphableModel's).
        image_size: nominal input size (any size >= 32 works; the pool is adaptive).
        width: channels of the first stage (doubles per stage, capped at 8 * width).
        max_angles: (pitch, yaw, roll) bounds in radians for the tanh-bounded rotation.
        translation_scale: cm per unit of raw translation output (x, y, z).
    """

    def __init__(self, layout: CoeffLayout | None = None, image_size: int = 112, width: int = 32,
                 hidden: int = 256, max_angles: tuple[float, float, float] = (math.pi / 2, math.pi / 2, math.pi / 2),
                 translation_scale: tuple[float, float, float] = (5.0, 5.0, 20.0)):
        super().__init__()
        self.layout = layout or CoeffLayout()
        self.image_size = image_size
        self._arch = {"image_size": int(image_size), "width": int(width), "hidden": int(hidden),
                      "max_angles": tuple(float(a) for a in max_angles),
                      "translation_scale": tuple(float(t) for t in translation_scale)}
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
        self.head = nn.Linear(hidden, self.layout.size)
        mean = self.layout.mean_frontal()
        self.register_buffer("max_angles", torch.tensor(max_angles, dtype=torch.float32))
        self.register_buffer("translation_scale", torch.tensor(translation_scale, dtype=torch.float32))
        self.register_buffer("translation_offset", mean[self.layout.slices["translation"]].clone())
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(self.raw_from_coeffs(mean[None])[0])

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

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) in [0,1] -> (B,P) coefficients."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"CoeffRegressor expects images (B,3,H,W) in [0,1], got {tuple(image.shape)}")
        x = self.trunk(image * 2.0 - 1.0)
        return self.coeffs_from_raw(self.head(self.hidden(x)))


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
