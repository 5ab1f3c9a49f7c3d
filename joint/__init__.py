"""Joint face recognition + 3D reconstruction: model, losses, config, training loop and the `lh2face` CLI.

`JointModel` is imported lazily so that `import joint` (e.g. by the CLI) pulls in neither torch models
nor the reconstruction branch.
"""

from typing import Any

__all__ = ["JointModel", "TrainConfig", "load_train_config"]


def __getattr__(name: str) -> Any:
    if name == "JointModel":
        from .model import JointModel

        return JointModel
    if name in ("TrainConfig", "load_train_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'joint' has no attribute {name!r}")
