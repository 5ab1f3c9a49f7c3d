"""`lh2face export-onnx --model RUN --out model.onnx`: the recognition network as ONNX (onnxruntime, ...).

    lh2face export-onnx --model runs/demo --out model.onnx

model.onnx: inputs float32 NCHW in [0,1] at the run's input size S, batch axis dynamic: `image`
(B,3,S,S) aligned RGB crop, plus `canonical` (B,3,S,S) and/or `depth` (B,1,S,S) for models trained with
them. Outputs: `embedding` (B,d) as the backbone gives it (un-normalised) and `embedding_normalized`
(B,d) with unit rows. The [0,1] -> [-1,1] normalisation is inside the graph.

For a model with canonical / depth channels, also model.regressor.onnx: `image` (B,3,R,R) [0,1] ->
`coeffs` (B,P), R = the run's recon.regressor_size (default S). The renderer step between the two
files is NOT in ONNX (it rasterises the 3D face model); with lh2face installed a deployment runs:

    coeffs = regressor_session.run(["coeffs"], {"image": image_R})[0]
    canonical, depth = joint.onnx_export.canonical_from_coeffs(coeffs, image_size=S)
    z, z_unit = model_session.run(None, {"image": image_S, "canonical": canonical, "depth": depth})

(canonical_from_coeffs = recon.canonical.render_canonical on the bundled morphable model). Only the
backbone is exported: tracing the whole joint model would freeze the rendered channels of the example
input into the graph as constants.

Each file is checked with onnxruntime against PyTorch on a random batch (max abs difference <=
--tolerance times max(1, max |output|)) before it is renamed into place; a failed check writes nothing.
Needs onnx, onnxruntime and onnxscript: pip install 'lh2face[onnx]'.
Exit codes: 0 written, 2 bad arguments / model / existing output / missing packages, 1 check failed.
"""

from __future__ import annotations

import argparse
import sys

from ._common import add_threads_argument
from ._run_regressor import add_run_argument, load_run_argument

NAME = "export-onnx"
HELP = "export the recognition network (and the coefficient regressor) to ONNX"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_run_argument(parser)
    parser.add_argument("--out", "-o", required=True, help="output .onnx file (the regressor goes beside it)")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                        help="torch.onnx exporter: dynamo (default; needs onnxscript) or the legacy torchscript one")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max abs difference onnxruntime vs torch accepted by the check, times max(1, max |output|) "
                             "(default 1e-4)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch check")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from joint.onnx_export import OnnxUnavailable, export_onnx, require_onnx

    if not args.tolerance >= 0:
        print(f"error: --tolerance must be >= 0, got {args.tolerance}", file=sys.stderr)
        return 2

    try:
        require_onnx(args.exporter)
    except OnnxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loaded = load_run_argument(args.model, "cpu")
    if loaded is None:
        return 2
    model, _, ckpt, _ = loaded
    try:
        report = export_onnx(model, args.out, exporter=args.exporter, opset=args.opset,
                             check=not args.no_check, overwrite=args.overwrite, tolerance=args.tolerance,
                             source=str(ckpt))
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def shapes(d):
        return ", ".join(f"{k} {tuple(v)}" for k, v in d.items())

    print(f"wrote {report.model_path}: inputs {shapes(report.inputs)} -> outputs {shapes(report.outputs)}")
    if report.regressor_path is not None:
        print(f"wrote {report.regressor_path}: inputs {shapes(report.regressor_inputs)} -> coeffs; render "
              "canonical + depth from coeffs with joint.onnx_export.canonical_from_coeffs (not in ONNX)")
    if report.max_abs_diff:
        diffs = ", ".join(f"{k} {v:.2e} (|output| <= {report.scale[k]:.3g})" for k, v in report.max_abs_diff.items())
        print(f"check: max |onnxruntime - torch| on a random batch: {diffs} (tolerance {args.tolerance:g})")
    return 0
