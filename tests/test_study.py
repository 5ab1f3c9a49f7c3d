"""joint.study: config strictness, run plan, pair metrics with norm bins, fixed-margin ablation head,
aggregation over seeds, run claims."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest
import torch

from lh2face.config import ConfigError
from joint import study

TRAIN = {"data": {"kind": "synthetic", "image_size": 32, "synth_identities": 4, "synth_images": 2},
         "model": {"backbone": "mobilefacenet", "embedding_size": 16}, "schedule": {"steps": 2, "batch_size": 4}}


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_config_plan_and_strictness(tmp_path):
    import yaml

    doc = {"study": {"heads": ["lh2face", "cosface"], "input_modes": ["rgb", "rgb+canonical+depth"], "seeds": [0, 1, 2],
                     "ablation": [{"name": "no pps", "head_options": {"w_pps": 0.0}},
                                  {"name": "fixed", "head": study.FIXED_MARGIN_HEAD}],
                     "ablation_seeds": [0]},
           "train": TRAIN}
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(doc))
    cfg = study.load_study_config(str(p))
    runs = study.plan_runs(cfg)
    assert len(runs) == 2 * 2 * 3 + 2
    assert len({r.key for r in runs}) == len(runs)
    rgb = study.run_config(cfg, runs[0])
    assert rgb.model.input_mode == "rgb" and rgb.loss.reco == 0.0  # rgb_fr_only: the plain FR model
    joint = next(r for r in runs if r.mode != "rgb")
    assert study.run_config(cfg, joint).model.input_mode == "rgb+canonical+depth"
    assert study.run_config(cfg, runs[-1]).model.head == study.FIXED_MARGIN_HEAD

    bad = dict(doc, study=dict(doc["study"], colour="red"))
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="colour"):
        study.load_study_config(str(p))
    bad = dict(doc, study=dict(doc["study"], head_options={"cosface": {"nope": 1}}))
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="nope"):
        study.load_study_config(str(p))
    bad = dict(doc, train=dict(TRAIN, model={"head": "arcface"}))
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="train.model.head"):
        study.load_study_config(str(p))
    bad = dict(doc, study=dict(doc["study"], input_modes=["depth"]))
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="depth"):
        study.load_study_config(str(p))


def test_pair_metrics_norm_bins():
    rng = np.random.default_rng(0)
    ids, per = 20, 6
    centres = rng.normal(size=(ids, 32))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(ids), per)
    # 4 of each identity's 6 images: high norm and clean; the other 2: low norm and noisy
    clean = np.tile(np.arange(per) < 4, ids)
    noise = np.where(clean[:, None], 0.05, 2.0) * rng.normal(size=(ids * per, 32))
    emb = (centres[labels] + noise)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True) * np.where(clean, 10.0, 1.0)[:, None]
    i1, i2 = np.triu_indices(len(labels), 1)
    same = labels[i1] == labels[i2]
    m = study.pair_metrics(emb, i1, i2, same, fars=[1e-3, 1e-2], norm_bins=4)
    assert 0.5 < m["accuracy"] <= 1.0
    bins = m["norm_bins"]
    assert len(bins) == 4
    assert sum(b["genuine"] for b in bins) == int(same.sum())
    assert sum(b["impostor"] for b in bins) == int((~same).sum())
    assert bins[0]["hi"] <= bins[-1]["lo"] + 1e-9
    # the highest-norm bin holds only clean pairs: accepted; the lowest mostly noisy ones: often rejected
    assert bins[-1]["tar@far=1e-02"] == pytest.approx(1.0)
    assert bins[0]["tar@far=1e-02"] < 0.6
    assert m["mean_norm"] == pytest.approx(7.0, rel=1e-6)
    assert len(m["roc"]["far"]) == len(m["roc"]["tar"])


def test_fixed_margin_head_uses_cosine_margin():
    study.register_ablation_heads()
    from recognition.heads import build_head

    torch.manual_seed(0)
    head = build_head(study.FIXED_MARGIN_HEAD, 5, embedding_size=8, scale_normalised=False,
                      w_pps=0.0, w_pns=0.0, w_pp=0.0)
    z = torch.randn(4, 8) * torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    y = torch.tensor([0, 1, 2, 3])
    norms = z.norm(dim=1)
    cos = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).t()
    stats = head.batch_statistics(norms)
    logits = head.margin_logits(cos, norms, y, stats)
    expected = norms[:, None] * cos
    expected[torch.arange(4), y] = norms * (cos[torch.arange(4), y] - head.margin_const)
    torch.testing.assert_close(logits, expected)
    loss, logs = head(z, y)
    assert torch.isfinite(loss)
    assert float(logs["margin"]) == pytest.approx(head.margin_const)


def test_aggregate_mean_std():
    def rec(seed, acc):
        bins = [{"bin": 1, "tar@far=1e-02": acc / 2}, {"bin": 2, "tar@far=1e-02": acc}]
        return {"group": "grid", "variant": "cosface", "mode": "rgb", "head": "cosface", "head_options": {},
                "seed": seed, "train_s": 1.0, "metrics": {"accuracy": acc, "auc": acc, "mean_norm": 3.0,
                "tar@far=1e-02": acc, "norm_bins": bins, "roc": {"far": [0.1, 1.0], "tar": [acc, 1.0]}}}

    rows = study.aggregate([rec(0, 0.6), rec(1, 0.8), rec(2, 0.7)], fars=[1e-2], norm_bins=2)
    assert len(rows) == 1
    r = rows[0]
    assert r["seeds"] == [0, 1, 2]
    assert r["accuracy"][0] == pytest.approx(0.7) and r["accuracy"][1] == pytest.approx(0.1)
    assert r["norm_bins"][0]["tar@far=1e-02"][0] == pytest.approx(0.35)
    assert r["roc"]["tar"][0] == pytest.approx(0.7)


def test_claims(tmp_path):
    d = tmp_path / "run"
    assert study.claim(d)
    assert study.claim(d)  # our own claim
    (d / ".claim").write_text("999999999")  # a process that does not exist
    assert study.claim(d)
    assert (d / ".claim").read_text() == str(os.getpid())
    (d / ".claim").write_text(str(os.getppid()))  # a live process
    assert not study.claim(d)
    study.release(d)
    assert not (d / ".claim").exists()
