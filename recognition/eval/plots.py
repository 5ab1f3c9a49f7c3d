"""Evaluation figures as PNG files, written atomically. matplotlib is imported lazily (Agg canvas,
no pyplot global state), so importing this module is cheap and side-effect free."""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

from lh2face.io import atomic_write

from .metrics import DEFAULT_FARS, format_far


def _new_figure(figsize: Tuple[float, float], dpi: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Any, dpi: int) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 4000) -> Tuple[np.ndarray, np.ndarray]:
    """At most ~max_points ROC points for drawing (IJB-C has ~15 M): for log-spaced FAR values the
    last point with fpr <= value is kept, so the drawn curve is the measured step curve sampled on a
    log grid. Shorter curves are returned unchanged. (K,), (K,) -> (M,), (M,)."""
    x = np.asarray(fpr, dtype=np.float64)
    y = np.asarray(tpr, dtype=np.float64)
    if x.size <= max_points:
        return x, y
    pos = x[x > 0]
    lo = float(pos.min()) if pos.size else 1e-12
    grid = np.logspace(np.log10(lo), np.log10(max(float(x[-1]), lo)), max_points - 2)
    idx = np.searchsorted(x, grid, side="right") - 1
    idx = np.unique(np.r_[0, idx[idx >= 0], x.size - 1])
    return x[idx], y[idx]


def plot_roc(
    path: Any,
    curves: Mapping[str, Tuple[Any, Any]],
    title: str = "ROC",
    far_range: Tuple[float, float] = (1e-6, 1.0),
    marks: Sequence[float] = DEFAULT_FARS,
    figsize: Tuple[float, float] = (6.4, 4.8),
    dpi: int = 100,
) -> None:
    """ROC curves with log-scaled FAR axis to a PNG of figsize * dpi pixels (640 x 480 by default).

    Args:
        path: output .png (parent folders are created; written atomically).
        curves: ``{name: (fpr, tpr)}``; points with fpr == 0 are not drawable on a log axis and are
            left out.
        marks: FAR values drawn as faint vertical guides.
    """
    if not curves:
        raise ValueError("plot_roc: no curves given")
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    for name, (fpr, tpr) in curves.items():
        x = np.asarray(fpr, dtype=np.float64)
        y = np.asarray(tpr, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"plot_roc: curve {name!r} has fpr {x.shape} and tpr {y.shape}")
        x, y = thin_roc(x, y)
        keep = x > 0
        ax.plot(x[keep], y[keep], label=str(name), linewidth=1.5)
    for f in marks:
        ax.axvline(f, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(*far_range)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(list(marks))
    ax.set_xticklabels([format_far(f) for f in marks])
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="major", linestyle=":", linewidth=0.6)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_metric_bars(
    path: Any,
    values: Mapping[str, float],
    errors: Optional[Mapping[str, float]] = None,
    title: str = "",
    ylabel: str = "",
    ylim: Optional[Tuple[float, float]] = None,
    figsize: Tuple[float, float] = (6.4, 4.8),
    dpi: int = 100,
) -> None:
    """Bar chart ``{name: value}`` with optional error bars ``{name: std}`` to a PNG (atomic)."""
    if not values:
        raise ValueError("plot_metric_bars: no values given")
    names = list(values)
    vals = [float(values[n]) for n in names]
    errs = [float(errors.get(n, 0.0)) for n in names] if errors else None
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), vals, yerr=errs, capsize=4 if errs else 0, color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30 if max(len(n) for n in names) > 8 else 0, ha="right")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", linestyle=":", linewidth=0.6)
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_lines(
    path: Any,
    series: Mapping[str, Tuple[Any, Any]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    figsize: Tuple[float, float] = (6.4, 4.8),
    dpi: int = 100,
) -> None:
    """Line plot ``{name: (x, y)}`` with markers (e.g. TAR against feature-norm bins) to a PNG (atomic)."""
    if not series:
        raise ValueError("plot_lines: no series given")
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    for name, (x, y) in series.items():
        ax.plot(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), marker="o", label=str(name))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, linestyle=":", linewidth=0.6)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path, dpi)
