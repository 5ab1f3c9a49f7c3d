"""A static HTML report of photo reconstructions: one index.html with its images beside it.

`write_report(results, out_dir)` takes recon.photos.PhotoResult items (successes and failures) and writes

  out_dir/index.html           summary (images, detection rate, mean NME before/after, seconds per image)
                               and one row per photo: input with the detected box and landmarks,
                               the fitted render over the aligned crop (detected landmarks red, model
                               landmarks green), canonical face, canonical depth, errors, loss curve;
                               failures listed with their reason;
  out_dir/images/*.png         the pictures the page shows.

Every file is written atomically; the page has no scripts and no external resources.
Command line: `lh2face report PHOTOS... --out DIR` (joint.commands.report).
"""

from __future__ import annotations

import html
import math
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from lh2face.io import PathLike, save_image, write_text_atomic

_CSS = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:20px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 6px} .sub{color:#666;margin-bottom:14px}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:6px;vertical-align:top}
th{background:#f0f0f0;font-weight:600;text-align:left}
.summary td:first-child{color:#555} .summary td{padding:4px 10px}
.faces img{display:block;image-rendering:pixelated}
.name{font-weight:600;max-width:180px;word-break:break-all} .ok{color:#14792b} .bad{color:#b3261e}
.num{font-variant-numeric:tabular-nums;white-space:nowrap} .cap{font-size:11px;color:#777}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "image"


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _input_picture(image: np.ndarray, face: Any, max_side: int = 180) -> np.ndarray:
    """The photo with the face box (yellow) and 68 landmarks (red), scaled so its long side is max_side."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image[..., :3] if image.ndim == 3 else image)).convert("RGB")
    scale = max_side / max(im.size)
    if scale != 1.0:
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.BILINEAR)
    if face is not None:
        draw = ImageDraw.Draw(im)
        x0, y0, x1, y1 = (float(v) * scale for v in face.box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 210, 0), width=2)
        r = max(1.0, 1.2 * scale)
        for x, y in np.asarray(face.landmarks68, dtype=np.float64) * scale:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 40, 40))
    return np.asarray(im)


def _loss_svg(history: Sequence[Dict[str, Any]], width: int = 160, height: int = 70) -> str:
    """Inline SVG of the total loss per step (log scale), stages separated by grey lines."""
    vals = np.array([h.get("total", np.nan) for h in history], dtype=np.float64)
    ok = np.isfinite(vals) & (vals > 0)
    if ok.sum() < 2:
        return '<span class="cap">no loss curve</span>'
    lv = np.log10(np.where(ok, vals, np.nan))
    lo, hi = np.nanmin(lv), np.nanmax(lv)
    span = max(hi - lo, 1e-6)
    n = len(vals)
    xs = 2 + (width - 4) * np.arange(n) / max(n - 1, 1)
    ys = 2 + (height - 4) * (1 - (lv - lo) / span)
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y, good in zip(xs, ys, ok) if good)
    marks = []
    for k in range(1, n):
        if history[k].get("stage") != history[k - 1].get("stage"):
            marks.append(f'<line x1="{xs[k]:.1f}" y1="0" x2="{xs[k]:.1f}" y2="{height}" stroke="#ccc"/>')
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="loss curve"><rect width="{width}" height="{height}" fill="#fff" stroke="#ddd"/>'
            + "".join(marks) + f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{pts}"/></svg>'
            f'<div class="cap">total loss, log scale: {vals[ok][0]:.3g} &rarr; {vals[ok][-1]:.3g}</div>')


def _img(rel: str, alt: str, size: int) -> str:
    return f'<img src="{html.escape(rel)}" alt="{html.escape(alt)}" width="{size}" height="{size}">'


def write_report(results: Iterable[Any], out_dir: PathLike, model: Any = None, renderer: Any = None,
                 title: str = "lh2face: reconstruction of photos", zoom: int = 2, display: int = 150) -> Path:
    """Write out_dir/index.html (+ out_dir/images/) for PhotoResult items; returns the index path.

    model / renderer: used to render the fitted faces (built when None and some result has coeffs);
    zoom: upscale of the rendered panels (image_size * zoom px files); display: their size on the page (px).
    """
    from .photos import summarize

    results = list(results)
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    if any(r.ok and r.coeffs is not None for r in results) and (model is None or renderer is None):
        from .morphable import MorphableModel
        from .render import build_renderer

        model = model if model is not None else MorphableModel()
        renderer = renderer if renderer is not None else build_renderer("auto")
    summary = summarize(results)
    rows: List[str] = []
    fails: List[str] = []
    for k, r in enumerate(results):
        stem = f"{k:03d}_{_slug(Path(r.path).stem)}"
        name = html.escape(str(Path(r.path).name))
        full = html.escape(str(r.path))
        cells: List[str] = []
        if r.image is not None:
            pic = _input_picture(r.image, r.face)
            save_image(img_dir / f"{stem}_input.png", pic)
            cells.append(f'<img src="images/{stem}_input.png" alt="input {name}" width="{pic.shape[1]}" '
                         f'height="{pic.shape[0]}">')
        else:
            cells.append('<span class="cap">unreadable</span>')
        if not r.ok:
            fails.append(f'<tr><td class="name" title="{full}">{name}</td><td>{cells[0]}</td>'
                         f'<td class="bad">{html.escape(r.reason)}</td></tr>')
            continue
        if r.coeffs is not None:
            from .visualize import face_panels

            size = int(r.aligned.shape[0])
            panels = face_panels(model, renderer, r.coeffs, input_image=r.aligned, input_landmarks=r.landmarks,
                                 input_size=size, zoom=zoom, captions=False)
            side = display
            for kind, panel in zip(("overlay", "canonical", "depth"), (panels[1], panels[2], panels[3])):
                save_image(img_dir / f"{stem}_{kind}.png", panel)
                cells.append(_img(f"images/{stem}_{kind}.png", f"{kind} {name}", side))
        else:
            save_image(img_dir / f"{stem}_aligned.png", r.aligned)
            cells.append(_img(f"images/{stem}_aligned.png", f"aligned {name}", display))
            cells += ["", ""]
        errs = [f"faces found: {r.num_faces}"]
        if r.nme:
            errs.append(f"NME before: {_fmt(r.nme.get('before'))}")
            errs.append(f"<b>NME after: {_fmt(r.nme.get('after'))}</b>")
        for key in ("detect", "fit"):
            if key in r.seconds:
                errs.append(f"{key}: {r.seconds[key]:.2f} s")
        curve = _loss_svg(r.fit_history) if r.fit_history else ""
        rows.append(f'<tr><td class="name" title="{full}">{name}</td>'
                    + "".join(f"<td>{c}</td>" for c in cells)
                    + f'<td class="num">{"<br>".join(errs)}</td><td>{curve}</td></tr>')

    s = summary
    summary_rows = [
        ("images", f"{s['images']} ({s['readable']} readable)"),
        ("faces detected", f"{s['with_face']} (detection rate {_fmt(s['detection_rate'], 3)})"),
        ("reconstructed", str(s["ok"])),
        ("landmark NME before fitting", _fmt(s["nme_before"])),
        ("landmark NME after fitting", _fmt(s["nme_after"])),
        ("seconds per image: detect / fit", f"{_fmt(s['seconds_detect'], 3)} / {_fmt(s['seconds_fit'], 2)}"),
    ]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="sub">Generated {time.strftime("%Y-%m-%d %H:%M:%S")}. NME: mean landmark distance between '
        "the model's 68 projected landmarks and the detected ones, divided by the outer-eye-corner distance "
        "(before: mean face at the solved pose; after: fitted).</div>",
        '<table class="summary">' + "".join(f"<tr><td>{html.escape(a)}</td><td class=\"num\">{b}</td></tr>"
                                            for a, b in summary_rows) + "</table>",
        "<h2>Reconstructions</h2>",
    ]
    if rows:
        parts.append('<table class="faces"><tr><th>photo</th><th>input (box, landmarks)</th>'
                     "<th>fit over aligned crop<br><span class=\"cap\">red detected, green model</span></th>"
                     "<th>canonical face</th><th>canonical depth</th><th>errors</th><th>loss</th></tr>"
                     + "".join(rows) + "</table>")
    else:
        parts.append("<p>No photo could be reconstructed.</p>")
    if fails:
        parts.append(f"<h2>Skipped ({len(fails)})</h2><table><tr><th>photo</th><th>input</th><th>reason</th></tr>"
                     + "".join(fails) + "</table>")
    parts.append("</body></html>")
    index = out / "index.html"
    write_text_atomic(index, "\n".join(parts) + "\n")
    return index
