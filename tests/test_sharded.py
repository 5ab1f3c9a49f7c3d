"""ShardedClassifier: 2 gloo processes on CPU equal one process holding the whole classifier."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recognition.heads import build_head
from recognition.sharded import (
    ShardedClassifier,
    logits_memory_bytes,
    proxy_memory_breakdown,
    proxy_memory_bytes,
    shard_range,
)

C, D, B_LOCAL, WORLD = 7, 16, 6, 2  # C not divisible by the world size on purpose

CASES: List[Tuple[str, Dict[str, Any]]] = [
    ("cosface", {}),
    ("arcface", {}),
    ("adaface", {}),
    ("lh2face", {}),  # defaults: scale-normalised, all proxy terms
    ("lh2face", dict(scale_normalised=False, pps_detach_direction=False, include_log_normalizer=True)),
    ("lh2face", dict(margin_stat="ema", detach_kappa=True, w_pns=0.5, w_pp=2.0)),
]


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = (torch.randn(WORLD * B_LOCAL, D, generator=g, dtype=torch.float64) * 3.0 + 0.5)
    labels = torch.tensor([0, 3, 3, 6, 1, 5, 2, 6, 0, 4, 3, 5])  # repeats, every class present
    weight = torch.randn(C, D, generator=g, dtype=torch.float64)
    return emb, labels, weight


def _reference(name: str, options: Dict[str, Any], steps: int = 2):
    """One process, whole classifier and whole batch; two steps so EMA state matters."""
    emb0, labels, weight = _data()
    head = build_head(name, C, D, **options).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    out = []
    for step in range(steps):
        emb = (emb0 * (1.0 + 0.3 * step)).clone().requires_grad_(True)
        head.weight.grad = None
        loss, logs = head(emb, labels)
        loss.backward()
        out.append((loss.detach(), {k: v.clone() for k, v in logs.items()}, emb.grad.clone(), head.weight.grad.clone()))
    return out


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = []
        emb0, labels, weight = _data()
        for name, options in CASES:
            clf = ShardedClassifier(name, C, D, **options).double()
            clf.load_full_weight(weight)
            per_step = []
            for step in range(2):
                emb_all = emb0 * (1.0 + 0.3 * step)
                emb = emb_all[rank * B_LOCAL:(rank + 1) * B_LOCAL].clone().requires_grad_(True)
                clf.weight.grad = None
                loss, logs = clf(emb, labels[rank * B_LOCAL:(rank + 1) * B_LOCAL])
                loss.backward()
                per_step.append((loss.detach(), {k: v.clone() for k, v in logs.items()}, emb.grad.clone(),
                                 clf.weight.grad.clone(), clf.class_start, clf.num_local))
            results.append(per_step)
        # a plain (replicated) lh2face head under data parallelism: the margin's batch mean is global
        local = emb0[rank * B_LOCAL:(rank + 1) * B_LOCAL]
        y_local = labels[rank * B_LOCAL:(rank + 1) * B_LOCAL]
        plain = {}
        for sync in (True, False):
            _, logs = build_head("lh2face", C, D, sync_batch_stats=sync).double()(local, y_local)
            plain[sync] = float(logs["norm_stat"])
        results.append(plain)
        # DDP compensation: the embedding gradient is scaled by the world size, proxies untouched
        clf = ShardedClassifier("cosface", C, D, ddp_average_compensation=True).double()
        clf.load_full_weight(weight)
        emb = emb0[rank * B_LOCAL:(rank + 1) * B_LOCAL].clone().requires_grad_(True)
        loss, _ = clf(emb, y_local)
        loss.backward()
        results.append((emb.grad.clone(), clf.weight.grad.clone()))
        torch.save(results, Path(outdir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> List[List[list]]:
    outdir = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_two_gloo_ranks_equal_one_process(two_rank_results, case: int) -> None:
    name, options = CASES[case]
    ref = _reference(name, options)
    for rank in range(WORLD):
        for step in range(2):
            loss, logs, g_emb, g_w, start, count = two_rank_results[rank][case][step]
            r_loss, r_logs, r_gemb, r_gw = ref[step]
            assert (start, count) == shard_range(C, WORLD, rank)
            torch.testing.assert_close(loss, r_loss, rtol=1e-10, atol=1e-10)
            assert set(logs) == set(r_logs)
            for k in r_logs:
                torch.testing.assert_close(logs[k], r_logs[k], rtol=1e-10, atol=1e-10, msg=lambda m: f"{k}: {m}")
            torch.testing.assert_close(g_emb, r_gemb[rank * B_LOCAL:(rank + 1) * B_LOCAL], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(g_w, r_gw[start:start + count], rtol=1e-9, atol=1e-12)
            assert g_emb.abs().sum() > 0 and g_w.abs().sum() > 0


def test_plain_head_under_data_parallel_averages_the_margin_statistic(two_rank_results) -> None:
    emb, _, _ = _data()
    norms = emb.norm(dim=1)
    for rank in range(WORLD):
        plain = two_rank_results[rank][-2]
        assert plain[True] == pytest.approx(float(norms.mean()), rel=1e-12)
        assert plain[False] == pytest.approx(float(norms[rank * B_LOCAL:(rank + 1) * B_LOCAL].mean()), rel=1e-12)


def test_ddp_average_compensation_scales_embedding_gradient(two_rank_results) -> None:
    _, _, r_gemb, r_gw = _reference("cosface", {}, steps=1)[0]
    for rank in range(WORLD):
        g_emb, g_w = two_rank_results[rank][-1]
        start, count = shard_range(C, WORLD, rank)
        torch.testing.assert_close(g_emb, WORLD * r_gemb[rank * B_LOCAL:(rank + 1) * B_LOCAL], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g_w, r_gw[start:start + count], rtol=1e-9, atol=1e-12)


def test_shard_ranges_cover_classes_once() -> None:
    for c, w in [(7, 2), (10, 3), (8, 8), (1000, 7)]:
        ranges = [shard_range(c, w, r) for r in range(w)]
        assert ranges[0][0] == 0 and sum(n for _, n in ranges) == c
        assert all(ranges[i][0] + ranges[i][1] == ranges[i + 1][0] for i in range(w - 1))
        assert max(n for _, n in ranges) - min(n for _, n in ranges) <= 1
    with pytest.raises(ValueError, match="num_classes"):
        shard_range(3, 4, 0)


@pytest.mark.parametrize("name", ["cosface", "arcface", "adaface", "lh2face"])
def test_world_one_equals_plain_head(name: str) -> None:
    emb, labels, weight = _data(1)
    head = build_head(name, C, D).double()
    clf = ShardedClassifier(name, C, D).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    clf.load_full_weight(weight)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    l1, logs1 = head(e1, labels)
    l2, logs2 = clf(e2, labels)
    l1.backward()
    l2.backward()
    assert float(l1.detach()) == float(l2.detach())
    assert torch.equal(e1.grad, e2.grad) and torch.equal(head.weight.grad, clf.weight.grad)


def test_sampling_keeps_positives_and_equals_head_on_the_subset() -> None:
    torch.manual_seed(3)
    num_classes = 40
    emb = torch.randn(8, D, dtype=torch.float64) * 4
    labels = torch.tensor([1, 5, 5, 17, 30, 39, 2, 1])
    weight = torch.randn(num_classes, D, dtype=torch.float64)
    clf = ShardedClassifier("lh2face", num_classes, D, sample_rate=0.25).double()
    clf.load_full_weight(weight)
    e = emb.clone().requires_grad_(True)
    loss, _ = clf(e, labels)
    loss.backward()
    cols = clf.last_columns
    assert cols is not None and cols.numel() == 10  # ceil(0.25 * 40), positives (6 classes) fit
    assert set(labels.tolist()) <= set(cols.tolist())
    # the same loss as a plain head over only the sampled classes, labels renumbered
    sub = build_head("lh2face", cols.numel(), D).double()
    with torch.no_grad():
        sub.weight.copy_(weight[cols])
    remap = {int(c): i for i, c in enumerate(cols.tolist())}
    e2 = emb.clone().requires_grad_(True)
    ref, _ = sub(e2, torch.tensor([remap[int(y)] for y in labels]))
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.grad, e2.grad, rtol=1e-10, atol=1e-12)
    # only sampled proxies receive gradient
    untouched = torch.ones(num_classes, dtype=torch.bool)
    untouched[cols] = False
    assert clf.weight.grad[untouched].abs().max() == 0
    torch.testing.assert_close(clf.weight.grad[cols], sub.weight.grad, rtol=1e-10, atol=1e-12)
    # more positives than the sampling budget: every positive is still kept
    clf2 = ShardedClassifier("cosface", num_classes, D, sample_rate=0.05).double()
    clf2(emb, labels)
    assert set(labels.tolist()) == set(clf2.last_columns.tolist())
    # eval mode never samples
    clf.eval()
    clf(emb, labels)
    assert clf.last_columns is None


def test_proxy_memory() -> None:
    # 1M classes, d 512, fp32, 8 ranks: 125,000 rows x 512 x 4 B = 256,000,000 B per copy
    b = proxy_memory_breakdown(1_000_000, 512, 8, torch.float32, "sgd")
    assert b["rows"] == 125_000 and b["weight"] == 256_000_000
    assert b["total"] == 3 * 256_000_000
    assert proxy_memory_bytes(1_000_000, 512, 8, torch.float32, "adamw") == 4 * 256_000_000
    # uneven split: the largest shard counts
    assert proxy_memory_breakdown(10, 4, 3, torch.float16, "none") == {
        "rows": 4, "weight": 32, "grad": 32, "optimizer": 0, "total": 64}
    # measured against real tensors of a shard
    clf = ShardedClassifier("cosface", 1000, 64)
    opt = torch.optim.AdamW(clf.parameters())
    loss, _ = clf(torch.randn(4, 64), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    state = opt.state[clf.weight]
    measured = sum(t.numel() * t.element_size() for t in (clf.weight, clf.weight.grad, state["exp_avg"], state["exp_avg_sq"]))
    assert measured == proxy_memory_bytes(1000, 64, 1, torch.float32, "adamw")
    assert logits_memory_bytes(1024, 1_000_000, 8) == 1024 * 125_000 * 4 * 3
    with pytest.raises(ValueError, match="optimizer"):
        proxy_memory_bytes(10, 4, 1, torch.float32, "lbfgs")
