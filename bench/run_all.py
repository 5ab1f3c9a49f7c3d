#!/usr/bin/env python
"""Run every benchmark of bench/ and write JSON plus one markdown table page.

    .venv/bin/python bench/run_all.py --out bench/results                 # full sizes (`make bench`)
    .venv/bin/python bench/run_all.py --out bench/results --quick --threads 1   # a few minutes on 2 CPU cores
    .venv/bin/python bench/run_all.py --out bench/results --device cuda
    .venv/bin/python bench/run_all.py --out bench/results --only heads joint

Benchmarks (each its own process, so one crash or memory blow-up does not take the others down; every
ratio is measured inside one process, with the compared variants alternated):
  backbones  bench/bench_backbones.py  fwd+bwd images/s, 3 vs 7 input channels
  heads      bench/bench_heads.py      fwd+bwd time of every head at 10k / 100k classes, x CosFace
  render     bench/bench_render.py     renderer stages (raster, interpolate, backward, total)
  joint      bench/bench_joint.py      joint training step vs FR-only step
  export     bench/bench_export.py     export / canonical render / synthetic faces per second
  profile    bench/profile_joint.py    where the joint step (configs/demo.yaml) spends its time, per part
Writes <out>/<name><suffix>.json per benchmark (suffix `_quick` with --quick, plus `_<device>` off CPU),
<out>/bench_all<suffix>.json (machine, versions, commands, load averages, every result) and the markdown
page (--md, default docs/BENCH.md; with --only it holds those benchmarks only). Sections of the existing
page that carry the KEEP_MARK line (hand-written analyses) are kept, after the generated ones, in their
order. Exit code 1 when a benchmark failed (the others still run).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (script, quick arguments, full arguments)
BENCHES: Dict[str, Dict[str, Any]] = {
    "backbones": {
        "script": "bench/bench_backbones.py",
        "quick": ["--models", "iresnet50,mobilefacenet", "--channels", "3,7", "--batch", "16", "--repeats", "3", "--warmup", "1"],
        "full": ["--models", "iresnet50,mobilefacenet", "--channels", "3,7", "--batch", "32", "--repeats", "10"],
        "threads_flag": "--threads",
    },
    "heads": {
        "script": "bench/bench_heads.py",
        "quick": ["--classes", "10000", "100000", "--batch", "64", "--dim", "512", "--repeats", "5", "--warmup", "1"],
        "full": ["--classes", "10000", "100000", "--batch", "128", "--dim", "512", "--repeats", "7"],
        "threads_flag": "--threads",
    },
    "render": {
        "script": "bench/bench_render.py",
        "quick": ["--sizes", "112", "224", "--repeats", "5", "--warmup", "1", "--no-backbone"],
        "full": ["--sizes", "112", "224", "--repeats", "10"],
        "threads_flag": "--threads",
    },
    "joint": {
        "script": "bench/bench_joint.py",
        "quick": ["--size", "112", "--batch", "8", "--repeats", "5"],
        "full": ["--size", "112", "--batch", "16", "--repeats", "5"],
        "threads_flag": "--threads",
    },
    "export": {
        "script": "bench/bench_export.py",
        "quick": ["--faces", "16", "--batch-size", "16", "--repeats", "5"],
        "full": ["--faces", "32", "--batch-size", "16", "--repeats", "5"],
        "threads_flag": "--threads",
    },
    "profile": {
        "script": "bench/profile_joint.py",
        "quick": ["--config", "configs/demo.yaml", "--warmup", "1", "--repeats", "2", "--steps", "1"],
        "full": ["--config", "configs/demo.yaml"],
        "threads_flag": "--threads",
    },
}
# A section ("## ..." up to the next "## ") of the markdown page holding this line is hand-written: kept on rewrite.
KEEP_MARK = "<!-- hand-written: bench/run_all.py keeps this section -->"


# ----------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(mod: str) -> Optional[str]:
    try:
        m = __import__(mod)
        return str(getattr(m, "__version__", "?"))
    except Exception:  # noqa: BLE001 - an absent optional library is reported as None
        return None


def machine_info(device: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "device": device,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    if device.startswith("cuda"):
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else None
            info["cuda"] = torch.version.cuda
        except Exception:  # noqa: BLE001
            info["gpu"] = None
    return info


# ------------------------------------------------------------------------------------------ running


def run_bench(name: str, args: argparse.Namespace, out_json: Path) -> Dict[str, Any]:
    spec = BENCHES[name]
    cmd = [sys.executable, str(ROOT / spec["script"])] + list(spec["quick" if args.quick else "full"])
    cmd += ["--device", args.device, "--out", str(out_json)]
    if args.threads > 0:
        cmd += [spec["threads_flag"], str(args.threads)]
    rec: Dict[str, Any] = {"name": name, "command": " ".join([Path(sys.executable).name] + cmd[1:]).replace(str(ROOT) + "/", ""),
                           "load_before": list(os.getloadavg())}
    print(f"[bench] {name}: {rec['command']}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        rec["returncode"] = proc.returncode
        if proc.returncode != 0:
            rec["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
    except subprocess.TimeoutExpired:
        rec["returncode"] = None
        rec["error"] = [f"timed out after {args.timeout} s"]
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec["load_after"] = list(os.getloadavg())
    if rec.get("returncode") == 0:
        try:
            rec["result"] = json.loads(out_json.read_text())
        except (OSError, ValueError) as exc:
            rec["error"] = [f"no readable result {out_json}: {exc}"]
    status = "ok" if "error" not in rec else f"FAILED: {rec['error'][0]}"
    print(f"[bench] {name}: {status} ({rec['wall_s']} s)", file=sys.stderr, flush=True)
    return rec


# ----------------------------------------------------------------------------------------- markdown


def _md_backbones(r: Dict[str, Any]) -> List[str]:
    rows = r["results"]
    lines = [f"Forward + backward of a random batch, train mode; median of {r['env']['repeats']} steps, "
             f"torch threads {r['env']['threads']}.", "",
             "| backbone | input channels | batch | size | median step (s) | images/s | 7-ch / 3-ch images/s |",
             "|---|---|---|---|---|---|---|"]
    by = {(x["model"], x["channels"]): x for x in rows if "error" not in x}
    for x in rows:
        if "error" in x:
            lines.append(f"| {x['model']} | {x['channels']} | {x['batch']} | {x['size']} | failed | {x['error'][:50]} | |")
            continue
        ref = by.get((x["model"], 3))
        ratio = f"{x['images_per_s'] / ref['images_per_s']:.2f}" if ref and x["channels"] != 3 else ""
        lines.append(f"| {x['model']} | {x['channels']} | {x['batch']} | {x['size']} | {x['median_step_s']:.4f} | "
                     f"{x['images_per_s']:.1f} | {ratio} |")
    return lines


def _md_heads(r: Dict[str, Any]) -> List[str]:
    classes = list(r["results"])
    lines = [f"Forward + backward to embeddings and proxies, batch {r['batch']}, d {r['dim']}, heads round-robin, "
             f"median of {r['repeats']} repeats (x CosFace = ratio of medians, same process).", "",
             "| head | " + " | ".join(f"{int(c):,} classes: ms (x CosFace)" for c in classes) + " |",
             "|---|" + "---|" * len(classes)]
    for label in r["results"][classes[0]]:
        cells = [f"{r['results'][c][label]['median_ms']:.1f} ({r['results'][c][label]['ratio_to_cosface']:.2f})"
                 for c in classes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _md_render(r: Dict[str, Any]) -> List[str]:
    m = r["meta"]
    lines = [f"ICT face mesh ({m['vertices']} vertices, {m['triangles']} triangles), median of {m['repeats']} runs, "
             f"torch threads {m['torch_threads']}.", "",
             "| size | batch | kernels | raster ms | interpolate ms | backward ms | total ms (render + backward) |",
             "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['size']} | {x['batch']} | {x['impl']} | {x['raster_ms']:.1f} | {x['interpolate_ms']:.1f} | "
                     f"{x['backward_ms']:.1f} | {x['total_ms']:.1f} |")
    if r.get("backbone"):
        b = r["backbone"]
        lines += ["", f"Reference, same process: IResNet-50 fwd+bwd, batch {b['batch']}, 3x112x112: {b['fwd_bwd_ms']:.1f} ms."]
    return lines


def _md_joint(r: Dict[str, Any]) -> List[str]:
    lines = [f"{r['backbone']} + {r['head']} head, batch {r['batch']} synthetic faces at {r['size']} px, one AdamW step "
             f"per variant per repeat (alternated), median of {r['repeats']}; x FR-only = ratio of medians.", "",
             "| variant | FR input | lambda reco / canon / view | median step (s) | images/s | x FR-only |",
             "|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {v['input_mode']} | {v['reco']:g} / {v['canon']:g} / {v['view']:g} | "
                     f"{v['median_s']:.3f} | {v['images_per_s']:.1f} | {v['ratio_to_fr_only']:.2f} |")
    return lines


def _md_export(r: Dict[str, Any]) -> List[str]:
    lines = [f"{r['faces']} synthetic identities per repeat, render batch {r['batch_size']}, stages alternated, "
             f"median of {r['repeats']} repeats ({r['renderer']}).", "",
             "| stage | faces/s | ms/face |", "|---|---|---|"]
    what = {"render": "render (canonical + depth + mesh, no files)", "export": "export (render + 6 files per face)",
            "synth": "synthetic training image (SyntheticFaces item)"}
    for k, v in r["stages"].items():
        lines.append(f"| {what.get(k, k)} | {v['faces_per_s']:.1f} | {v['ms_per_face']:.1f} |")
    return lines


def _md_profile(r: Dict[str, Any]) -> List[str]:
    sys.path.insert(0, str(ROOT / "bench"))
    from profile_joint import markdown as profile_markdown

    return profile_markdown(r).rstrip("\n").splitlines()


FORMATTERS: Dict[str, Callable[[Dict[str, Any]], List[str]]] = {
    "backbones": _md_backbones, "heads": _md_heads, "render": _md_render, "joint": _md_joint, "export": _md_export,
    "profile": _md_profile}
TITLES = {"backbones": "1. Backbones: fwd+bwd images/s, 3 vs 7 input channels",
          "heads": "2. Heads: fwd+bwd time as a ratio to CosFace",
          "render": "3. Renderer stages",
          "joint": "4. Joint training step vs FR-only step",
          "export": "5. Export throughput",
          "profile": "6. Joint step profile: forward and backward time per part"}


def kept_sections(page: str) -> List[str]:
    """The sections ("## " heading to the next one) of a markdown page that contain KEEP_MARK, in order."""
    sections: List[List[str]] = []
    for line in page.splitlines():
        if line.startswith("## "):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return ["\n".join(sec).rstrip() for sec in sections if KEEP_MARK in sec]


def markdown(summary: Dict[str, Any], keep: Optional[List[str]] = None) -> str:
    """The page for `summary`; `keep`: hand-written sections (kept_sections) appended after the generated ones."""
    m = summary["machine"]
    load = m.get("load_average")
    lines = ["# lh2face benchmarks", "",
             f"Command: `{summary['command']}`" + (" (quick sizes)" if summary["quick"] else ""), "",
             f"Machine: {m['cpu_model']}, {m['cpus_usable']} usable of {m['cpu_count']} CPUs"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "")
             + (f"; 1/5/15-min load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}" if load else "")
             + f". Device `{m['device']}`, torch threads {summary['threads'] or 'default'}.",
             f"Versions: Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, numba {m['numba']}; "
             f"lh2face commit {m.get('git_commit')}; {m['date_utc']}.", "",
             "Every figure is a median of repeated runs; every ratio compares variants measured in the same process, "
             "alternated. The load average before / after each benchmark is given because the machine may be "
             "shared: absolute times on a loaded machine are pessimistic, ratios much less so.", ""]
    for rec in summary["benches"]:
        name = rec["name"]
        lines += [f"## {TITLES.get(name, name)}", "", f"`{rec['command']}` ({rec['wall_s']} s; load "
                  f"{rec['load_before'][0]:.2f} before, {rec['load_after'][0]:.2f} after)", ""]
        if "error" in rec:
            lines += [f"FAILED: {rec['error'][0]}", ""]
            continue
        try:
            lines += FORMATTERS[name](rec["result"]) + [""]
        except (KeyError, TypeError, ValueError) as exc:
            lines += [f"(result present but not tabulated: {type(exc).__name__}: {exc}; see the JSON)", ""]
    for sec in keep or []:
        lines += [sec, ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON results")
    p.add_argument("--md", type=Path, default=ROOT / "docs" / "BENCH.md", help="markdown page to write")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (minutes on 2 CPU cores)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (passed to every benchmark)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per benchmark (0 = torch's default)")
    p.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES), help="run these benchmarks only")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per benchmark before it is stopped")
    args = p.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("run_all: --device cuda asked for but CUDA is not available", file=sys.stderr)
            return 2
    suffix = ("_quick" if args.quick else "") + ("" if args.device == "cpu" else "_" + args.device.replace(":", ""))
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python bench/run_all.py " + " ".join(a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:]))
    summary: Dict[str, Any] = {"command": command.strip(), "quick": args.quick, "threads": args.threads,
                               "machine": machine_info(args.device), "benches": []}
    from lh2face.io import write_json_atomic, write_text_atomic

    keep = kept_sections(args.md.read_text()) if args.md.exists() else []
    for name in args.only:
        summary["benches"].append(run_bench(name, args, args.out / f"{name}{suffix}.json"))
        write_json_atomic(args.out / f"bench_all{suffix}.json", summary)
        write_text_atomic(args.md, markdown(summary, keep))
    print(markdown(summary, keep))
    return 1 if any("error" in b for b in summary["benches"]) else 0


if __name__ == "__main__":
    sys.exit(main())
