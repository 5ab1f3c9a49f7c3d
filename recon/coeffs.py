"""One flat coefficient vector with named slices, and the mean frontal face.

Order (sizes for the default MorphableModel(n_id=100, n_expr=53, n_albedo=20)):
    id (n_id, ~N(0,1)) | expr (n_expr, in [0,1]) | albedo (3*n_albedo, ~N(0,1), channel-minor: [k*3 + c])
    | rotation (3: pitch, yaw, roll radians, see recon.geometry) | translation (3, cm, camera axes)
    | light (27: 9 SH x RGB, channel-major, see recon.lighting)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .camera import CANONICAL_TRANSLATION
from .lighting import standard_light

NAMES = ("id", "expr", "albedo", "rotation", "translation", "light")


@dataclass(frozen=True)
class CoeffLayout:
    """Sizes of the slices; `slices[name]` -> slice into the flat vector, `size` = total length P."""

    n_id: int = 100
    n_expr: int = 53
    n_albedo: int = 20
    slices: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("n_id", "n_expr", "n_albedo"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"CoeffLayout.{name} must be a non-negative int, got {v!r}")
        sizes = self.sizes
        out, start = {}, 0
        for name in NAMES:
            out[name] = slice(start, start + sizes[name])
            start += sizes[name]
        object.__setattr__(self, "slices", out)

    @classmethod
    def from_model(cls, model) -> "CoeffLayout":
        """Layout matching a MorphableModel's n_id / n_expr / n_albedo."""
        return cls(n_id=model.n_id, n_expr=model.n_expr, n_albedo=model.n_albedo)

    @property
    def sizes(self) -> dict[str, int]:
        return {"id": self.n_id, "expr": self.n_expr, "albedo": 3 * self.n_albedo,
                "rotation": 3, "translation": 3, "light": 27}

    @property
    def size(self) -> int:
        return self.n_id + self.n_expr + 3 * self.n_albedo + 33

    def split(self, coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
        """coeffs (B,P) -> dict of views: id (B,n_id), expr (B,n_expr), albedo (B,n_albedo,3),
        rotation (B,3), translation (B,3), light (B,27)."""
        if coeffs.dim() != 2 or coeffs.shape[1] != self.size:
            raise ValueError(f"coefficients must be (B,{self.size}) for {self}, got {tuple(coeffs.shape)}")
        out = {name: coeffs[:, s] for name, s in self.slices.items()}
        out["albedo"] = out["albedo"].reshape(coeffs.shape[0], self.n_albedo, 3)
        return out

    def join(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of split; every name must be present (albedo may be (B,n_albedo,3) or (B,3*n_albedo))."""
        missing = [n for n in NAMES if n not in parts]
        extra = [n for n in parts if n not in NAMES]
        if missing or extra:
            raise ValueError(f"join needs exactly the slices {NAMES}; missing {missing}, unknown {extra}")
        B = parts["id"].shape[0]
        flat = []
        for name in NAMES:
            x = parts[name].reshape(B, -1)
            if x.shape[1] != self.sizes[name]:
                raise ValueError(f"slice {name!r} must have {self.sizes[name]} values per sample, got {x.shape[1]}")
            flat.append(x)
        return torch.cat(flat, 1)

    def mean_frontal(self, batch: int | None = None, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """The mean face (id, expr, albedo zero), frontal (rotation zero), at the canonical camera's
        translation, under the standard light: (P,) or (batch,P)."""
        z = lambda n: torch.zeros(1, n, dtype=dtype)  # noqa: E731
        v = self.join({
            "id": z(self.n_id), "expr": z(self.n_expr), "albedo": z(3 * self.n_albedo), "rotation": z(3),
            "translation": torch.tensor([CANONICAL_TRANSLATION], dtype=dtype),
            "light": standard_light(1, dtype=dtype),
        })[0].to(device)
        return v if batch is None else v.expand(batch, -1).clone()
