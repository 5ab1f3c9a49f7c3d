"""lh2face: shared utilities used by `recognition`, `recon` and `joint`.

The three packages never import each other's internals for I/O, config or registries: they all use
this small package instead (see DESIGN.md section 7).
"""

__version__ = "0.1.0"
