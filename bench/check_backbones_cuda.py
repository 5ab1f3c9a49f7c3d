"""CUDA checks of the backbones and alignment (run on a GPU machine; results in bench/results/backbones_h200_device_check.json):
grad_checkpoint output/gradient equality and peak memory, and warp_affine against cv2.warpAffine (cv2 centres pixels
at integers, so its matrix is shifted by half a pixel)."""
import sys, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np, torch
from recognition.backbones import build_backbone
from lh2face.align import warp_affine
out = {}
dev = torch.device("cuda")
for name in ("iresnet50", "mobilefacenet"):
    torch.manual_seed(0)
    a = build_backbone(name, in_channels=7).to(dev).train()
    b = build_backbone(name, in_channels=7, grad_checkpoint=True).to(dev).train()
    b.load_state_dict(a.state_dict())
    x = torch.rand(16, 7, 112, 112, device=dev)
    torch.cuda.reset_peak_memory_stats(); ya = a(x); ya.square().sum().backward(); ma = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats(); yb = b(x); yb.square().sum().backward(); mb = torch.cuda.max_memory_allocated()
    g = max((p.grad - q.grad).abs().max().item() / (p.grad.abs().max().item() + 1e-12) for p, q in zip(a.parameters(), b.parameters()) if p.grad is not None)
    out[name] = {"out_maxdiff": (ya - yb).abs().max().item(), "grad_rel_maxdiff": g, "peak_mem_plain_MB": ma / 2**20, "peak_mem_ckpt_MB": mb / 2**20}
try:
    import cv2
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)
    c, s = np.cos(0.3) * 0.9, np.sin(0.3) * 0.9
    M = np.array([[c, -s, 12.0], [s, c, -5.0]])
    # cv2 puts pixel centres at integers: M_cv = T(-0.5) M T(+0.5)
    Mcv = M.copy(); Mcv[:, 2] = M[:, 2] + M[:, :2] @ [0.5, 0.5] - 0.5
    ref = cv2.warpAffine(img, Mcv, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ours = warp_affine(img, M, (112, 112))
    d = np.abs(ref.astype(int) - ours.astype(int))
    out["cv2_warp"] = {"max_absdiff": int(d.max()), "frac_gt1": float((d > 1).mean()), "interior_max": int(d[10:-10, 10:-10].max())}
except Exception as e:
    out["cv2_warp"] = repr(e)
print(json.dumps(out, indent=1))
