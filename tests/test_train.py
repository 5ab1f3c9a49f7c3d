"""Training loop: schedule, sampler, exact resume after SIGKILL, checkpoint fallback, NaN / bad-data stops,
run-directory outputs, and a 2-process gloo DDP run (identical weights on both ranks)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from joint.config import load_train_config
from joint.data import ResumableBatchSampler, balanced_subset, make_pairs, split_identities
from joint.checkpoints import Checkpointer
from joint.errors import DataFaultError, NonFiniteLossError
from joint.run_state import lr_factor
from joint.train import train
from lh2face.io import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def make_faces(root: Path, n_ids: int = 7, per_id: int = 6, size: int = 32, seed: int = 0) -> Path:
    """A tiny ImageFolder: each identity is a fixed random pattern plus per-image noise."""
    rng = np.random.default_rng(seed)
    for i in range(n_ids):
        base = rng.uniform(0, 255, (size, size, 3))
        d = root / f"id{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_id):
            img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{k}.png")
    return root


def tiny_config(tmp: Path, data_root: Path, **over) -> Path:
    cfg = {
        "data": {"kind": "imagefolder", "root": str(data_root), "train_identities": 4, "eval_identities": 3,
                 "image_size": 32, "max_bad_fraction": 0.2},
        "model": {"backbone": "mobilefacenet", "embedding_size": 32, "head": "cosface", "head_options": {"s": 16.0}},
        "optim": {"name": "adamw", "lr": 0.01, "grad_clip": 5.0},
        "schedule": {"steps": 8, "batch_size": 8, "warmup_steps": 2, "log_every": 1, "checkpoint_every": 3,
                     "keep_checkpoints": 3},
        "eval": {"n_folds": 5, "batch_size": 32},
        "run": {"seed": 3, "device": "cpu", "threads": 1, "progress": False, "tensorboard": False},
    }
    for key, value in over.items():
        sec, k = key.split("__")
        cfg[sec][k] = value
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_faces(tmp_path_factory.mktemp("faces"))


# ------------------------------------------------------------------------------------------- units


def test_lr_schedule_warmup_then_cosine():
    total, warm, lo = 100, 10, 0.1
    assert lr_factor(0, total, warm, lo) == pytest.approx(0.1)
    assert lr_factor(9, total, warm, lo) == pytest.approx(1.0)
    assert lr_factor(10, total, warm, lo) == pytest.approx(1.0)
    # half way through the cosine part: lo + (1 - lo) * 0.5
    assert lr_factor(55, total, warm, lo) == pytest.approx(lo + (1 - lo) * 0.5)
    assert lr_factor(100, total, warm, lo) == pytest.approx(lo)
    assert lr_factor(5, total, 0, lo) == pytest.approx(lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * 0.05)))


def test_sampler_resumes_mid_epoch_and_partitions_ranks():
    full = ResumableBatchSampler(23, 4, seed=5)
    full.set_epoch(2)
    batches = list(full)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    assert len(set(sum(batches, []))) == 20  # a permutation, last partial batch dropped
    resumed = ResumableBatchSampler(23, 4, seed=5)
    resumed.set_epoch(2, start_batch=3)
    assert list(resumed) == batches[3:]
    other = ResumableBatchSampler(23, 4, seed=5)
    other.set_epoch(3)
    assert list(other) != batches
    r0 = ResumableBatchSampler(23, 3, seed=1, rank=0, world=2).epoch_indices(0)
    r1 = ResumableBatchSampler(23, 3, seed=1, rank=1, world=2).epoch_indices(0)
    assert len(r0) == len(r1) == 12 and set(r0) | set(r1) == set(range(23))


def test_identity_split_and_pairs():
    labels = [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    tr, ev, lm = split_identities(labels, 2, 0)
    assert tr == list(range(6)) and ev == list(range(6, 12)) and lm == {0: 0, 1: 1}
    i1, i2, same = make_pairs([labels[i] for i in ev], max_pairs=1000)
    assert len(same) == 15 and int(same.sum()) == 6  # C(6,2) pairs, 2 ids x C(3,2) genuine
    i1, i2, same = make_pairs(labels, max_pairs=20, seed=1)
    assert len(same) == 20 and int(same.sum()) == 10
    lab = np.asarray(labels)
    assert np.array_equal(lab[i1.numpy()] == lab[i2.numpy()], same.numpy())
    _, _, same = make_pairs(labels, max_pairs=1000)
    b = balanced_subset(same, seed=2)
    assert int(same[b].sum()) == 12 and len(b) == 24 and len(set(b.tolist())) == 24


def test_checkpointer_falls_back_past_corrupt_latest(tmp_path):
    ck = Checkpointer(tmp_path, keep=3)
    for s in (2, 4, 6):
        ck.save(s, {"step": s, "w": torch.full((3,), float(s))})
    ck.prune()
    data = ck.path(6).read_bytes()
    ck.path(6).write_bytes(data[: len(data) // 2])  # truncated newest
    step, state = ck.latest_good()
    assert step == 4 and torch.equal(state["w"], torch.full((3,), 4.0))
    ck.path(4).write_bytes(b"")  # zero-byte next one too
    assert ck.latest_good()[0] == 2


# ------------------------------------------------------------------------------------ whole runs


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_run(faces, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    cfg_path = tiny_config(tmp, faces)
    out = tmp / "run"
    rc = subprocess.run([PY, "-m", "joint.train", "--config", str(cfg_path), "--out", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-3000:]
    return cfg_path, out, rc


def test_run_directory_outputs(reference_run):
    cfg_path, out, rc = reference_run
    for name in ("config.yaml", "train.log", "metrics.jsonl", "train.csv", "eval.csv", "results.json",
                 "plots/loss.png", "plots/roc.png", "checkpoints/ckpt_00000008.pt"):
        assert (out / name).is_file(), name
    # the resolved config loads back to the same values
    resolved = load_train_config(out / "config.yaml")
    original = load_train_config(cfg_path)
    assert resolved.model == original.model and resolved.schedule == original.schedule
    assert resolved.run.out == str(out)
    rows = [yaml.safe_load(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in rows if r["kind"] == "train")
    assert "held-out verification: accuracy" in rc.stdout
    assert "memory estimate per process" in rc.stderr
    # checkpoints 3, 6 and the final 8 kept (keep_checkpoints=3)
    assert Checkpointer(out / "checkpoints").steps() == [3, 6, 8]


def test_sigkill_resume_reaches_identical_weights(reference_run, tmp_path):
    cfg_path, ref_out, _ = reference_run
    out = tmp_path / "killed"
    cmd = [PY, "-m", "joint.train", "--config", str(cfg_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / "ckpt_00000003.pt"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # between checkpoint 3 and 6
    proc.wait()
    assert not (out / "checkpoints" / "ckpt_00000008.pt").exists()
    rc = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert "resumed from" in rc.stderr
    final = out / "checkpoints" / "ckpt_00000008.pt"
    assert _same_weights(_weights(final), _weights(ref_out / "checkpoints" / "ckpt_00000008.pt"))
    steps = [yaml.safe_load(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
             if '"train"' in l]
    assert steps == list(range(1, 9))  # no duplicated rows from the killed attempt


def test_resume_after_corrupt_latest_checkpoint_matches(reference_run, tmp_path):
    cfg_path, ref_out, _ = reference_run
    out = tmp_path / "partial"
    cfg = load_train_config(cfg_path, ["schedule.steps=8"])
    cfg.run.progress = False
    # run to the end, then corrupt the step-6 checkpoint and delete the final one: resume must use step 3
    train(cfg, out=str(out))
    (out / "checkpoints" / "ckpt_00000008.pt").unlink()
    p6 = out / "checkpoints" / "ckpt_00000006.pt"
    p6.write_bytes(p6.read_bytes()[:-100])
    cfg2 = load_train_config(cfg_path)
    cfg2.run.progress = False
    train(cfg2, out=str(out), resume=True)
    log_text = (out / "train.log").read_text()
    assert "falling back to the previous one" in log_text and "at step 3" in log_text
    assert _same_weights(_weights(out / "checkpoints" / "ckpt_00000008.pt"),
                         _weights(ref_out / "checkpoints" / "ckpt_00000008.pt"))


def test_nan_loss_stops_naming_step_and_term(faces, tmp_path, monkeypatch):
    import recognition.heads as heads

    real = heads.build_head

    def poisoned(*a, **k):
        head = real(*a, **k)
        fwd = head.forward
        calls = {"n": 0}

        def forward(z, y):
            calls["n"] += 1
            loss, logs = fwd(z, y)
            if calls["n"] == 5:  # the 5th training step (step index 4)
                logs = dict(logs)
                logs["l_cosface"] = torch.tensor(float("nan"))
                loss = loss * float("nan")
            return loss, logs

        head.forward = forward
        return head

    monkeypatch.setattr(heads, "build_head", poisoned)
    cfg = load_train_config(tiny_config(tmp_path, faces))
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg, out=str(out))
    msg = str(err.value)
    assert "step 4" in msg and "l_cosface" in msg and "ckpt_00000003.pt" in msg
    assert Checkpointer(out / "checkpoints").steps() == [3]  # nothing written after the bad step
    assert load_checkpoint(out / "checkpoints" / "ckpt_00000003.pt")["step"] == 3


def test_bad_images_are_skipped_and_counted_then_stop_past_fraction(tmp_path):
    root = make_faces(tmp_path / "faces", n_ids=7, per_id=6)
    (root / "id00" / "0.png").write_bytes(b"")  # zero-byte
    (root / "id01" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    cfg = load_train_config(tiny_config(tmp_path, root, schedule__steps=6, schedule__checkpoint_every=0))
    out = tmp_path / "run"
    train(cfg, out=str(out))
    log_text = (out / "train.log").read_text()
    assert "id00/0.png" in log_text and "id01/1.png" in log_text
    rows = [yaml.safe_load(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("bad_samples", 0) for r in rows) >= 2
    # 2 of 24 training images bad = 8%: over a 5% limit the run stops with a clear message
    cfg = load_train_config(tiny_config(tmp_path, root, data__max_bad_fraction=0.05))
    with pytest.raises(DataFaultError, match="max_bad_fraction"):
        train(cfg, out=str(tmp_path / "run2"))


def test_config_faults_one_line_before_work(faces, tmp_path, capsys):
    from joint.cli import main

    cases = {
        "unknown key": ["-o", "optim.lrr=0.1"],
        "wrong type": ["-o", "schedule.steps=many"],
        "missing data path": ["-o", f"data.root={tmp_path / 'nope'}"],
        "unknown head": ["-o", "model.head=sphereface"],
        "unknown backbone": ["-o", "model.backbone=resnet9000"],
    }
    expect = {"unknown key": "optim.lrr", "wrong type": "schedule.steps", "missing data path": "data.root",
              "unknown head": "sphereface", "unknown backbone": "resnet9000"}
    cfg_path = tiny_config(tmp_path, faces)
    for name, extra in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        capsys.readouterr()
        assert main(["train", "--config", str(cfg_path), "--out", str(out), *extra]) == 2, name
        err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: config:") and expect[name] in lines[0], (name, err)
        assert not out.exists(), f"{name}: work started"
    # and through the real console entry point, in a fresh process
    out = tmp_path / "out_subprocess"
    rc = subprocess.run([PY, "-m", "joint.train", "--config", str(cfg_path), "--out", str(out), "-o", "optim.lrr=1"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rc.returncode == 2 and rc.stderr.strip().count("\n") == 0 and "optim.lrr" in rc.stderr
    assert not out.exists()


def test_two_process_gloo_run_identical_weights(faces, tmp_path):
    cfg_path = tiny_config(tmp_path, faces, schedule__steps=4, schedule__checkpoint_every=0,
                           schedule__batch_size=4)
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rc = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                         "joint.train", "--config", str(cfg_path), "--out", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert rc.returncode == 0, rc.stderr[-4000:]
    s0 = load_checkpoint(out / "checkpoints" / "ckpt_00000004.pt")
    s1 = load_checkpoint(out / "checkpoints" / "ckpt_00000004.rank1.pt")
    assert s0["world"] == 2 and s1["rank"] == 1
    trunk0 = {k: v for k, v in s0["model"].items() if k.startswith("trunk.")}
    trunk1 = {k: v for k, v in s1["model"].items() if k.startswith("trunk.")}
    # parameters are identical; BatchNorm running statistics are rank 0's (DDP broadcasts buffers at
    # every forward), each rank's last local update aside
    params = [k for k in trunk0 if "running_" not in k and "num_batches" not in k]
    assert params and all(torch.equal(trunk0[k], trunk1[k]) for k in params)
    init = load_train_config(cfg_path)
    # the weights did move (a run that trains nothing would also be "identical")
    from joint.model import JointModel

    torch.manual_seed(0)
    m = JointModel.from_config(init, 4)
    moved = [k for k, v in m.trunk.state_dict().items()
             if v.dtype.is_floating_point and not torch.equal(v, trunk0["trunk." + k])]
    assert moved
    # each rank holds half of the 4 proxies
    heads0 = [v for k, v in s0["model"].items() if k.startswith("head.") and k.endswith("weight")]
    assert heads0 and heads0[0].shape[0] == 2


def test_recordio_training_data_matches_the_imagefolder_split(faces, tmp_path):
    """A RecordIO copy of the ImageFolder (same images, PNG-lossless) gives the same identity split, labels
    and pixels through joint.data.build_data."""
    from joint.config import DataConfig, EvalConfig
    from joint.data import build_data
    from recognition.data import ImageFolderDataset, write_recordio

    src = ImageFolderDataset(str(faces), image_size=None)
    samples = [(np.asarray(Image.open(p).convert("RGB")), y) for p, y in src.samples]
    write_recordio(tmp_path / "t.rec", samples, encoding="png")
    common = dict(train_identities=4, eval_identities=3, image_size=32)
    a = build_data(DataConfig(kind="imagefolder", root=str(faces), **common), EvalConfig(n_folds=5))
    b = build_data(DataConfig(kind="recordio", rec=str(tmp_path / "t.rec"), **common), EvalConfig(n_folds=5))
    assert a.num_classes == b.num_classes == 4 and len(a.train) == len(b.train) == 24
    for i in (0, 7, 23):
        assert a.train[i]["label"] == b.train[i]["label"]
        assert torch.allclose(a.train[i]["image"], b.train[i]["image"], atol=1 / 255)
    assert torch.equal(a.eval_labels, b.eval_labels) and torch.equal(a.eval_pairs[2], b.eval_pairs[2])


def test_bf16_autocast_path_trains(faces, tmp_path):
    """The mixed-precision switch: the trunk runs under bf16 autocast, the head in float32; steps stay finite."""
    cfg = load_train_config(tiny_config(tmp_path, faces, schedule__steps=2, schedule__checkpoint_every=0,
                                        run__precision="bf16", run__plots=False))
    res = train(cfg, out=str(tmp_path / "bf16"))
    rows = [yaml.safe_load(l) for l in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert "accuracy" in res
