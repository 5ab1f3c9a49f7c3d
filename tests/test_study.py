"""joint.study: config strictness, run plan, one meaning of the input modes, pair metrics with norm bins,
aggregation over seeds, run claims, the study_modes preset."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

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
                                  {"name": "fixed", "head_options": {"margin": "fixed_cosine"}}],
                     "ablation_seeds": [0], "loss_by_mode": {"rgb": {"reco": 0.0}}},
           "train": dict(TRAIN, loss={"reco": 1.0})}
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(doc))
    cfg = study.load_study_config(str(p))
    runs = study.plan_runs(cfg)
    assert len(runs) == 2 * 2 * 3 + 2
    assert len({r.key for r in runs}) == len(runs)
    rgb = study.run_config(cfg, runs[0])
    assert rgb.model.input_mode == "rgb" and rgb.loss.reco == 0.0 and not rgb.uses_recon  # loss_by_mode
    joint = next(r for r in runs if r.mode != "rgb")
    jc = study.run_config(cfg, joint)
    assert jc.model.input_mode == "rgb+canonical+depth" and jc.loss.reco == 1.0
    last = study.run_config(cfg, runs[-1])
    assert last.model.head == "lh2face" and last.model.head_options == {"margin": "fixed_cosine"}
    # without loss_by_mode an rgb run keeps the config's lambdas: the reconstruction branch trains
    doc_plain = dict(doc, study={k: v for k, v in doc["study"].items() if k != "loss_by_mode"})
    p.write_text(yaml.safe_dump(doc_plain))
    plain = study.load_study_config(str(p))
    rgb2 = study.run_config(plain, study.plan_runs(plain)[0])
    assert rgb2.model.input_mode == "rgb" and rgb2.loss.reco == 1.0 and rgb2.uses_recon

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
    for lbm, needle in (({"depth": {"reco": 0.0}}, "depth"), ({"rgb": {"recoo": 0.0}}, "recoo")):
        p.write_text(yaml.safe_dump(dict(doc, study=dict(doc["study"], loss_by_mode=lbm))))
        with pytest.raises(ConfigError, match=needle):
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


def test_study_modes_preset_is_the_demo_with_four_modes():
    """configs/study_modes.yaml: the lh2face head, seed 0, the four input modes, and per run exactly
    configs/demo.yaml's training config (same data, budget and loss lambdas in every mode)."""
    from pathlib import Path

    from lh2face.config import to_dict
    from joint.config import INPUT_MODES, load_train_config

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = study.load_study_config(str(root / "study_modes.yaml"))
    runs = study.plan_runs(cfg)
    assert [r.mode for r in runs] == list(INPUT_MODES) and {r.head for r in runs} == {"lh2face"}
    assert {r.seed for r in runs} == {0}
    demo = load_train_config(root / "demo.yaml")
    for spec in runs:
        rc = to_dict(study.run_config(cfg, spec))
        want = to_dict(demo)
        want["model"]["input_mode"] = spec.mode
        for d in (rc, want):
            d["run"].pop("out")
            d["run"].pop("progress")
        assert rc == want, spec.key
        assert rc["loss"]["reco"] > 0  # the reconstruction branch trains in every mode


def test_fixed_margin_ablation_run_evaluates_and_resumes(tmp_path, capsys):
    """The ablation is a registered head option: its run folder resumes (head state included) and
    `lh2face eval` evaluates it like any run."""
    import json
    import sys
    from pathlib import Path

    from joint.cli import main
    from joint.config import load_train_config
    from joint.train import train

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_train import make_faces, tiny_config

    faces = make_faces(tmp_path / "faces")
    over = ["model.head=lh2face", "model.head_options={margin: fixed_cosine}", "schedule.steps=4",
            "schedule.checkpoint_every=2", "eval.n_folds=2", "run.plots=false"]
    cfg_path = tiny_config(tmp_path, faces)
    out = tmp_path / "ablation"
    train(load_train_config(cfg_path, over), out=str(out))
    (out / "checkpoints" / "ckpt_00000004.pt").unlink()
    train(load_train_config(cfg_path, over), out=str(out), resume=True)
    assert "resumed from" in (out / "train.log").read_text()
    assert json.loads((out / "results.json").read_text())["step"] == 4
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--folder", str(faces), "--folds", "2", "--quiet"]) == 0
    assert "faces: accuracy" in capsys.readouterr().out
