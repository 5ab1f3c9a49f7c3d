"""3D face reconstruction: ICT morphable model, camera, lighting, renders, regressor and losses.

Public names: MorphableModel, CoeffLayout, euler_to_matrix, matrix_to_euler, model_to_camera,
intrinsics, project, canonical_camera, sh_shading, render_face, render_canonical, CoeffRegressor
(submodules: recon.render, recon.losses, recon.geometry, ...).
Importing this package loads no data; MorphableModel() reads the bundled asset when constructed.
"""

from .camera import canonical_camera, intrinsics, project
from .canonical import render_canonical
from .coeffs import CoeffLayout
from .face import render_face
from .geometry import euler_to_matrix, matrix_to_euler, model_to_camera
from .lighting import sh_shading
from .morphable import MorphableModel
from .regressor import CoeffRegressor

__all__ = [
    "MorphableModel", "CoeffLayout", "euler_to_matrix", "matrix_to_euler", "model_to_camera",
    "intrinsics", "project", "canonical_camera", "sh_shading", "render_face", "render_canonical",
    "CoeffRegressor",
]
