#!/usr/bin/env python
"""Where the joint training step spends its time: forward and backward per part, from torch.profiler.

    python bench/profile_joint.py --config configs/demo.yaml --threads 1
    python bench/profile_joint.py --config configs/demo.yaml -o loss.canon=0.5 -o loss.view=0.25 --threads 1

One full training step (trunk forward, L_train, backward, AdamW step) of the config's model on a batch of
synthetic faces, profiled for --steps steps after --warmup untimed ones. Parts are marked from outside
the model (nothing in the model changes): the regressor, backbone and head modules, and the functions in
PARTS below (renders, L_reco terms), each wrapped in a ``record_function`` scope. Forward time of a
part = the total of its scopes; backward time = the total of the autograd nodes whose forward op ran
inside that part (matched by the op's sequence number); everything else (resizes, concatenation, the
novel-view composite, L_view, the loss sum, the autograd engine) is "other". Profiling adds overhead to
every op, so the table also gives the unprofiled median step time measured just before.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from _report import finish  # noqa: E402  (bench/ is on sys.path when a script here runs)

# (module, attribute, label or a function of the call count -> label): the functions timed as parts.
# The joint model looks these up at call time, so wrapping the module attribute reaches its calls (in
# an older checkout, where the renders computed their own geometry, the geometry is inside the renders).
PARTS: List[Tuple[str, str, Any]] = [
    ("recon.face", "face_geometry", "face geometry (shape, normals, albedo)"),
    ("recon.canonical", "render_canonical", "render canonical + depth"),
    ("recon.face", "render_face",
     lambda n: "render input view (L_reco)" if n % 2 == 0 else "render novel view (L_view)"),
    ("joint.losses", "reconstruction_terms", "L_reco terms"),
]
ORDER = ["regressor", "face geometry (shape, normals, albedo)", "render canonical + depth",
         "render input view (L_reco)", "L_reco terms",
         "render novel view (L_view)", "backbone", "head", "other", "optimizer step"]


def _labelled(fn: Callable, label: Any, counter: Dict[str, int], key: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = counter[key]
        counter[key] += 1
        name = label(n) if callable(label) else label
        with record_function(f"part::{name}"):
            return fn(*args, **kwargs)

    return wrapper


def _install(model: torch.nn.Module, reco_on: bool) -> Callable[[], None]:
    """Wrap the parts; returns a function that resets the per-step call counters."""
    counter: Dict[str, int] = defaultdict(int)
    for mod_name, attr, label in PARTS:
        mod = importlib.import_module(mod_name)
        if not hasattr(mod, attr):  # an older checkout without this function: its time stays in its caller
            continue
        if not reco_on and callable(label):  # only the novel view calls render_face without L_reco
            label = "render novel view (L_view)"
        setattr(mod, attr, _labelled(getattr(mod, attr), label, counter, f"{mod_name}.{attr}"))
    for label, m in (("regressor", model.trunk.regressor), ("backbone", model.trunk.backbone), ("head", model.head)):
        if m is not None:
            m.forward = _labelled(m.forward, label, counter, label)
    return counter.clear


def _part_of(event: Any) -> Optional[str]:
    p = event
    while p is not None:
        if p.name.startswith("part::"):
            return p.name[len("part::"):]
        p = p.cpu_parent
    return None


def breakdown(events: List[Any], steps: int) -> Dict[str, Dict[str, float]]:
    """Per part: forward ms, backward ms (per step) from the profiler's event list."""
    seq_part: Dict[int, str] = {}
    fwd: Dict[str, float] = defaultdict(float)
    bwd: Dict[str, float] = defaultdict(float)
    total_bwd = 0.0
    for e in events:
        if e.name.startswith("part::"):
            if _part_of(e.cpu_parent) is None:  # outermost scope only
                fwd[e.name[len("part::"):]] += e.cpu_time_total
        elif e.name == "optimizer step":
            fwd["optimizer step"] += e.cpu_time_total
        elif e.name == "backward":
            total_bwd += e.cpu_time_total
        elif e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            part = _part_of(e)
            if part is not None:
                seq_part.setdefault(e.sequence_nr, part)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            bwd[seq_part.get(e.sequence_nr, "other")] += e.cpu_time_total
    bwd["other"] += total_bwd - sum(bwd.values())
    step_total = sum(e.cpu_time_total for e in events if e.name == "step")
    fwd["other"] += step_total - sum(fwd.values()) - total_bwd
    names = [n for n in ORDER if n in fwd or n in bwd] + sorted(set(fwd) | set(bwd) - set(ORDER))
    return {n: {"forward_ms": fwd.get(n, 0.0) / 1e3 / steps, "backward_ms": bwd.get(n, 0.0) / 1e3 / steps}
            for n in names}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from bench_joint import synthetic_batch

    from joint.config import load_train_config
    from joint.losses import joint_loss
    from joint.model import JointModel

    cfg = load_train_config(args.config, args.override, check_paths=False)
    device = torch.device(args.device)
    batch = synthetic_batch(cfg.schedule.batch_size, cfg.data.image_size, device)
    images, labels = batch["image"], batch["label"]
    extras = {k: v for k, v in batch.items() if k not in ("image", "label", "n_bad", "n_seen")}
    torch.manual_seed(0)
    model = JointModel.from_config(cfg, int(labels.max()) + 1).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        out = model.trunk(images, extras)
        loss, _ = joint_loss(out, labels, model.head, model.lambdas)
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer step"):
            opt.step()

    times = []
    for i in range(args.warmup + args.repeats):
        t = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    reset = _install(model, cfg.loss.reco > 0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            reset()
            with record_function("step"):
                step()
    parts = breakdown(list(prof.events()), args.steps)
    return {"config": str(args.config), "overrides": list(args.override), "batch": cfg.schedule.batch_size,
            "size": cfg.data.image_size, "backbone": cfg.model.backbone, "input_mode": cfg.model.input_mode,
            "loss": {"reco": cfg.loss.reco, "canon": cfg.loss.canon, "view": cfg.loss.view},
            "step_median_s": statistics.median(times), "repeats": args.repeats, "steps_profiled": args.steps,
            "parts": parts}


def markdown(r: Dict[str, Any]) -> str:
    over = " ".join("-o " + o for o in r["overrides"])
    lines = [f"Joint step breakdown: config {r['config']} {over}".rstrip() + f", {r['backbone']}, batch {r['batch']}, "
             f"{r['size']} px, input {r['input_mode']}, lambda reco / canon / view "
             f"{r['loss']['reco']:g} / {r['loss']['canon']:g} / {r['loss']['view']:g}; unprofiled step "
             f"{r['step_median_s']:.3f} s (median of {r['repeats']}); profiled means over {r['steps_profiled']} steps",
             "", "| part | forward ms | backward ms | total ms | share |", "|---|---|---|---|---|"]
    tot = sum(v["forward_ms"] + v["backward_ms"] for v in r["parts"].values())
    for name, v in r["parts"].items():
        s = v["forward_ms"] + v["backward_ms"]
        lines.append(f"| {name} | {v['forward_ms']:.1f} | {v['backward_ms']:.1f} | {s:.1f} | {100 * s / tot:.0f}% |")
    lines.append(f"| **step (profiled)** | | | {tot:.1f} | 100% |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (numba compilation, allocator)")
    p.add_argument("--repeats", type=int, default=5, help="unprofiled timed steps")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON path (a .md with the table is written next to it)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        r = run(args)
    except Exception as exc:  # a bad config or override: one line
        from lh2face.config import ConfigError

        if not isinstance(exc, (ConfigError, FileNotFoundError)):
            raise
        print(f"profile_joint: {exc}", file=sys.stderr)
        return 2
    return finish(r, torch.device(args.device), markdown, args.out)


if __name__ == "__main__":
    sys.exit(main())
