"""Where bundled assets live. Override with the LH2FACE_ASSETS environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def assets_dir() -> Path:
    """The `assets/` folder of the checkout (editable install) or $LH2FACE_ASSETS."""
    env = os.environ.get("LH2FACE_ASSETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "assets"


def asset(*parts: str) -> Path:
    path = assets_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"bundled asset {path} is missing; reinstall lh2face from a full checkout "
            "or point LH2FACE_ASSETS at a folder that holds it"
        )
    return path
