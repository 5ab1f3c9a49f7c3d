"""Export a trained model's recognition network (and its coefficient regressor) to ONNX.

What goes into ONNX, and what does not:

- ``model.onnx``: the FR backbone with the input layout it was trained on. Inputs (float32, NCHW, [0, 1],
  batch axis dynamic, S = the run's ``data.image_size``): ``image`` (B,3,S,S) RGB aligned crop, and for
  models trained with reconstruction channels ``canonical`` (B,3,S,S) and/or ``depth`` (B,1,S,S). The
  graph concatenates them itself and maps [0, 1] to [-1, 1] itself. Outputs: ``embedding`` (B,d) as the
  backbone gives it (un-normalised: its norm is the quality signal) and ``embedding_normalized`` (B,d),
  the same rows L2-normalised (compare these with a dot product).
- ``<out>.regressor.onnx`` (only for models with canonical / depth channels): the coefficient regressor,
  ``image`` (B,3,R,R) RGB [0, 1] -> ``coeffs`` (B,P), R = ``recon.regressor_size`` (default S).
- NOT in ONNX: the renderer step coefficients -> (canonical, depth). It rasterises the morphable model
  and stays in PyTorch: ``canonical, depth = recon.canonical.render_canonical(MorphableModel(),
  build_renderer(), coeffs, image_size=S)`` (``canonical_from_coeffs`` below wraps it).

Only the backbone is traced. Tracing the whole joint model (``torch.jit.trace(model.embed, ...)``)
silently freezes the rendered channels of the example input into the graph as constants, so every new
face would get the example's canonical face and depth.

Export writes to a temporary file beside the target, checks it with ``onnx.checker`` and with
onnxruntime against PyTorch on a random batch, and only then renames it into place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lh2face.io import _current_umask

OUTPUT_NAMES = ("embedding", "embedding_normalized")
EXPORTERS = ("torchscript", "dynamo")
INSTALL_HINT = "pip install 'lh2face[onnx]'"


class OnnxUnavailable(RuntimeError):
    """onnx / onnxruntime (or onnxscript for the dynamo exporter) is not installed."""


def require_onnx(exporter: str = "torchscript") -> Tuple[Any, Any]:
    """(onnx, onnxruntime) modules; raises OnnxUnavailable naming the install command when missing."""
    missing = []
    mods = []
    for name in ("onnx", "onnxruntime") + (("onnxscript",) if exporter == "dynamo" else ()):
        try:
            mods.append(__import__(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxUnavailable(f"ONNX export needs {', '.join(missing)} (not installed); install them with "
                              f"{INSTALL_HINT}")
    return mods[0], mods[1]


def input_names(input_mode: str) -> List[str]:
    """ONNX input names for an input mode, in the order the channels are concatenated."""
    names = ["image"]
    if "canonical" in input_mode:
        names.append("canonical")
    if "depth" in input_mode:
        names.append("depth")
    return names


def input_channels(name: str) -> int:
    return 1 if name == "depth" else 3


class RecognitionGraph(nn.Module):
    """Backbone with its trained input layout: (image[, canonical][, depth]) -> (embedding, normalised).

    Each input (B,C_i,S,S) float [0,1]; outputs (B,d) un-normalised and (B,d) unit-norm rows.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0]
        z = self.backbone(x)
        return z, F.normalize(z, p=2.0, dim=1)


@dataclass
class ExportReport:
    """What export_onnx wrote: paths, input/output names and shapes, the parity check's max |onnx - torch|."""

    model_path: Path
    regressor_path: Optional[Path]
    inputs: Dict[str, Tuple[Any, ...]]
    outputs: Dict[str, Tuple[Any, ...]]
    regressor_inputs: Dict[str, Tuple[Any, ...]] = field(default_factory=dict)
    max_abs_diff: Dict[str, float] = field(default_factory=dict)
    scale: Dict[str, float] = field(default_factory=dict)  # max |torch output| per checked output


@contextlib.contextmanager
def _quiet_fds():
    """Silence stdout and stderr at the file-descriptor level (the exporters print from C++ too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _export_module(module: nn.Module, args: Tuple[torch.Tensor, ...], path: Path, in_names: Sequence[str],
                   out_names: Sequence[str], exporter: str, opset: Optional[int]) -> None:
    """torch.onnx.export of `module` on example `args` to `path`, batch axis (0) dynamic on every I/O."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter '{exporter}'; use one of {', '.join(EXPORTERS)}")
    kwargs: Dict[str, Any] = dict(input_names=list(in_names), output_names=list(out_names))
    if exporter == "dynamo":
        batch = torch.export.Dim("batch")
        specs = tuple({0: batch} for _ in args)
        kwargs["dynamic_shapes"] = (specs,) if isinstance(module, RecognitionGraph) else specs  # *inputs
        kwargs["external_data"] = False  # one self-contained file (weights inside; fine below 2 GB)
    else:
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in list(in_names) + list(out_names)}
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    disabled = logging.root.manager.disable
    try:
        with warnings.catch_warnings(), _quiet_fds():
            # the TorchScript exporter warns that it is deprecated and that the backbone's shape check is
            # traced as a constant (it is: channels and size are fixed, only the batch axis varies), and
            # prints its whole graph on failure; the dynamo one prints its stages and its optimiser's steps
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
            torch.onnx.export(module, args, str(path), dynamo=(exporter == "dynamo"), **kwargs)
    except Exception as exc:  # noqa: BLE001 - report which network and which exporter failed
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        first = (str(exc).strip().splitlines() or [""])[0].split(" [Caused by")[0][:300]
        raise RuntimeError(f"torch.onnx.export ({exporter} exporter) failed for the {type(module).__name__}: "
                           f"{type(exc).__name__}: {first}; try --exporter {other}") from exc
    finally:
        logging.disable(disabled)


def _add_metadata(onnx: Any, path: Path, metadata: Dict[str, str]) -> None:
    """Store string metadata in the model (onnxruntime: session.get_modelmeta().custom_metadata_map)."""
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def run_onnx(path: Union[str, Path], feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Run an ONNX file with onnxruntime (CPU, one thread) -> {output name: array}."""
    _, ort = require_onnx()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()})))


def _compare(report: ExportReport, name: str, got: np.ndarray, ref: torch.Tensor) -> None:
    r = ref.detach().cpu().numpy()
    report.max_abs_diff[name] = float(np.abs(got - r).max())
    report.scale[name] = float(np.abs(r).max())


@contextlib.contextmanager
def _staged(target: Path):
    """A temporary .onnx path beside `target`; renamed onto it only by `_commit`, removed otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp.onnx", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        for leftover in (tmp, tmp + ".data"):  # .data: external weights, should an exporter write them
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _check_out(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise FileExistsError(f"{path} is a folder; give a file name like model.onnx")


def regressor_path_for(out: Union[str, Path]) -> Path:
    """`model.onnx` -> `model.regressor.onnx` (beside it)."""
    out = Path(out)
    stem = out.name[:-5] if out.name.endswith(".onnx") else out.name
    return out.with_name(f"{stem}.regressor.onnx")


def export_onnx(model: Any, out: Union[str, Path], exporter: str = "dynamo",
                opset: Optional[int] = None, check: bool = True, overwrite: bool = False,
                tolerance: float = 1e-4, seed: int = 0, source: str = "") -> ExportReport:
    """Export `model` (a joint.JointModel in eval mode, e.g. from joint.runs.load_run) to ONNX.

    Writes `out` (recognition network) and, when the model has canonical / depth channels,
    `regressor_path_for(out)`. With `check`, each file is run with onnxruntime on a random batch of 2
    and must match PyTorch within `tolerance` * max(1, max |torch output|) (max abs difference; float32
    rounding grows with the output's magnitude, large in untrained networks), else RuntimeError and nothing is
    written. Raises OnnxUnavailable when onnx / onnxruntime are missing, FileExistsError when a target
    exists and not `overwrite`.
    """
    from joint.runs import regress_coeffs

    onnx, _ = require_onnx(exporter)
    out = Path(out)
    input_mode = str(model.input_mode)
    size = int(model.trunk.image_size)
    names = input_names(input_mode)
    needs_regressor = len(names) > 1
    reg_out = regressor_path_for(out) if needs_regressor else None
    _check_out(out, overwrite)
    if reg_out is not None:
        _check_out(reg_out, overwrite)
        if model.regressor is None:
            raise ValueError(f"input_mode {input_mode} needs a regressor but the model has none")
    model = model.eval()
    gen = torch.Generator().manual_seed(seed)
    graph = RecognitionGraph(model.backbone).eval()
    example = tuple(torch.rand(2, input_channels(n), size, size, generator=gen) for n in names)
    meta = {"lh2face.input_mode": input_mode, "lh2face.image_size": str(size),
            "lh2face.inputs": "float32 NCHW RGB in [0,1]; normalisation to [-1,1] is inside the graph",
            "lh2face.outputs": "embedding (un-normalised), embedding_normalized (L2)",
            "lh2face.source": source or "", "lh2face.embedding_size": str(int(model.embedding_size))}
    report = ExportReport(out, reg_out,
                          inputs={n: ("batch", input_channels(n), size, size) for n in names},
                          outputs={n: ("batch", int(model.embedding_size)) for n in OUTPUT_NAMES})
    with _staged(out) as tmp_model, contextlib.ExitStack() as stack:
        with torch.no_grad():
            _export_module(graph, example, tmp_model, names, OUTPUT_NAMES, exporter, opset)
        _add_metadata(onnx, tmp_model, meta)
        staged = [(tmp_model, out)]
        tmp_reg = None
        if reg_out is not None:
            tmp_reg = stack.enter_context(_staged(reg_out))
            rsize = int(model.trunk.regressor_size)
            reg_example = (torch.rand(2, 3, rsize, rsize, generator=gen),)
            with torch.no_grad():
                _export_module(model.regressor.eval(), reg_example, tmp_reg, ["image"], ["coeffs"], exporter, opset)
            _add_metadata(onnx, tmp_reg, {
                "lh2face.image_size": str(rsize), "lh2face.source": source or "",
                "lh2face.outputs": "coeffs (B,P) in recon.coeffs.CoeffLayout order; render canonical + depth "
                                   "with recon.canonical.render_canonical (not in ONNX)"})
            report.regressor_inputs = {"image": ("batch", 3, rsize, rsize)}
            staged.append((tmp_reg, reg_out))
        if check:
            with torch.no_grad():
                ref_z = graph(*example)
                got = run_onnx(tmp_model, {n: t.numpy() for n, t in zip(names, example)})
                for name, ref in zip(OUTPUT_NAMES, ref_z):
                    _compare(report, name, got[name], ref)
                if tmp_reg is not None:
                    ref_c = regress_coeffs(model.trunk, reg_example[0])  # R px: the resize is a no-op
                    got_c = run_onnx(tmp_reg, {"image": reg_example[0].numpy()})
                    _compare(report, "coeffs", got_c["coeffs"], ref_c)
            bad = {k: v for k, v in report.max_abs_diff.items()
                   if not v <= tolerance * max(1.0, report.scale[k])}
            if bad:
                raise RuntimeError(f"ONNX export check failed: max |onnxruntime - torch| {bad} > {tolerance} x "
                                   f"max(1, |output|) (|output| up to {report.scale}); "
                                   f"nothing written (try the other --exporter)")
        mode = 0o666 & ~_current_umask()  # mkstemp made the files 0600; give them the usual mode
        for tmp, target in staged:
            os.chmod(tmp, mode)
            os.replace(tmp, target)
    return report


def canonical_from_coeffs(coeffs: Union[np.ndarray, torch.Tensor], image_size: int,
                          renderer: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """The renderer step a deployment runs between the two ONNX files (needs lh2face, not ONNX).

    coeffs (B,P) from `<out>.regressor.onnx` -> (canonical (B,3,S,S), depth (B,1,S,S)) float32 in
    [0,1], S = image_size (the run's data.image_size), as the model computed them in training.
    """
    from recon import CoeffLayout, MorphableModel
    from recon.canonical import render_canonical
    from recon.render import build_renderer

    mm = MorphableModel()
    c = torch.as_tensor(np.asarray(coeffs, dtype=np.float32))
    with torch.no_grad():
        canon, depth = render_canonical(mm, build_renderer(backend=renderer), c, image_size=int(image_size),
                                        layout=CoeffLayout.from_model(mm))
    return canon.numpy(), depth.numpy()
