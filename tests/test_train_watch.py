"""Watching a run: per-step train.log lines, the TensorBoard line, evaluation on several targets during
training with the best value per target and best.pt, strict JSON results, and the single training step."""

from __future__ import annotations

import io
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from joint.config import load_train_config
from joint.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import make_faces, tiny_config  # noqa: E402


def _strict_json(path: Path) -> dict:
    def reject(const):
        raise ValueError(f"non-JSON literal {const} in {path}")

    return json.loads(path.read_text(), parse_constant=reject)


def _bin(path: Path, n: int = 12, size: int = 32) -> Path:
    from recognition.data import write_verification_bin

    rng = np.random.default_rng(1)
    blobs, issame = [], []
    for k in range(n):
        a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        b = a if k % 2 == 0 else rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for arr in (a, b):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            blobs.append(buf.getvalue())
        issame.append(k % 2 == 0)
    write_verification_bin(path, blobs, issame)
    return path


def _lfw(root: Path) -> str:
    rng = np.random.default_rng(2)
    names = [f"P_{i}" for i in range(4)]
    for n in names:
        (root / n).mkdir(parents=True)
        for k in (1, 2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / n / f"{n}_{k:04d}.jpg")
    lines = ["1\t4"] + [f"{n}\t1\t2" for n in names] + [f"{names[i]}\t1\t{names[(i + 1) % 4]}\t2" for i in range(4)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return f"lfw:{root / 'pairs.txt'}:{root}"


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watch")
    faces = make_faces(tmp / "faces")
    targets = ["heldout", str(_bin(tmp / "pairs.bin")), _lfw(tmp / "lfw")]
    cfg = load_train_config(tiny_config(tmp, faces, schedule__steps=6, schedule__eval_every=2,
                                        schedule__log_every=2, schedule__checkpoint_every=0,
                                        eval__n_folds=2, run__plots=False),
                            [f"eval.targets={json.dumps(targets)}"])
    out = tmp / "run"
    res = train(cfg, out=str(out))
    return out, res, targets


def test_train_log_has_a_line_per_logged_step_and_the_result(watched_run):
    out, res, _ = watched_run
    text = (out / "train.log").read_text()
    lines = re.findall(r"step (\d+)/6 \| loss (\S+) .*\| lr (\S+) \| (\S+) img/s \| ETA (\S+)", text)
    assert [int(l[0]) for l in lines] == [2, 4, 6]
    assert all(np.isfinite(float(l[1])) and float(l[2]) > 0 and float(l[3]) > 0 for l in lines)
    assert "l_fr" in text and re.search(r"ETA \d+m\d\ds", text)
    assert f"finished at step 6: accuracy {res['accuracy']:.4f}" in text


def test_every_target_evaluated_periodically_best_kept(watched_run):
    out, res, targets = watched_run
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if r["kind"] == "eval"]
    names = ["heldout", "pairs", "lfw"]
    assert sorted({(r["step"], r["target"]) for r in ev}) == sorted((s, n) for s in (2, 4, 6) for n in names)
    results = _strict_json(out / "results.json")
    assert set(results["targets"]) == set(names) and results["eval"] == results["targets"]["heldout"]
    assert results["targets"]["pairs"]["pairs"] == 12 and results["targets"]["lfw"]["pairs"] == 8
    for n in names:  # the best accuracy (first step reaching it) of each target, from the metrics rows
        accs = [(r["accuracy"], -r["step"]) for r in ev if r["target"] == n]
        best, neg_step = max(accs)
        assert results["best"][n] == {"accuracy": pytest.approx(best), "step": -neg_step}
    # best.pt: the weights of the best step of the first target, a loadable checkpoint
    from lh2face.io import load_checkpoint

    state = load_checkpoint(out / "best.pt")
    assert state["step"] == results["best"]["heldout"]["step"]
    assert results["best_checkpoint"] == str(out / "best.pt")


def test_best_checkpoint_evaluates_with_the_eval_command(watched_run, tmp_path, capsys):
    from joint.cli import main

    out, _, targets = watched_run
    assert main(["eval", "--model", str(out / "best.pt"), "--bin", targets[1], "--folds", "2", "--quiet",
                 "--out", str(tmp_path)]) == 0
    assert _strict_json(tmp_path / "result.json")["pairs"] == 12


def test_tensorboard_one_line_either_way(tmp_path, monkeypatch, caplog):
    from joint import metrics_log

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the package is missing
    with caplog.at_level("INFO", logger="lh2face.train"):
        m = metrics_log.MetricsLog(tmp_path, enabled=True, tensorboard=True)
    assert m.tb is None and "pip install tensorboard" in caplog.text
    written = []
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = lambda folder: types.SimpleNamespace(
        add_scalar=lambda *a: written.append(a), close=lambda: None, folder=folder)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    caplog.clear()
    with caplog.at_level("INFO", logger="lh2face.train"):
        m = metrics_log.MetricsLog(tmp_path, enabled=True, tensorboard=True)
    assert f"TensorBoard events: {tmp_path / 'tb'}" in caplog.text
    m.write("train", 3, {"loss": 1.5, "nan_term": float("nan")})
    assert ("train/loss", 1.5, 3) in written
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["loss"] == 1.5 and row["nan_term"] is None


def test_bad_eval_target_is_a_config_error_before_work(tmp_path):
    from lh2face.config import ConfigError

    faces = make_faces(tmp_path / "faces", n_ids=5, per_id=3)
    with pytest.raises(ConfigError, match="eval.targets"):
        load_train_config(tiny_config(tmp_path, faces), ["eval.targets=[cfp_fp]"])
    cfg = load_train_config(tiny_config(tmp_path, faces), [f"eval.targets=[{tmp_path / 'missing.bin'}]"])
    with pytest.raises(ConfigError, match="missing.bin does not exist"):
        train(cfg, out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- the training step


def _tiny_model(seed: int = 0):
    from joint.config import TrainConfig
    from joint.model import JointModel

    cfg = TrainConfig()
    cfg.model.embedding_size, cfg.model.head, cfg.data.image_size = 16, "cosface", 32
    torch.manual_seed(seed)
    return JointModel.from_config(cfg, 3)


def test_train_step_is_forward_loss_backward_clip_step():
    """joint.step.train_step against the same step written out by hand (torch's own clip and AdamW)."""
    from joint.losses import joint_loss
    from joint.step import train_step

    a, b = _tiny_model(), _tiny_model()
    a.train(), b.train()
    oa, ob = torch.optim.AdamW(a.parameters(), lr=1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2)
    torch.manual_seed(5)
    batch = {"image": torch.rand(6, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    logs = train_step(a, batch, oa, grad_clip=0.5)
    loss, ref_logs = joint_loss(b.trunk(batch["image"], {}), batch["label"], b.head, b.lambdas)
    ob.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    ob.step()
    assert float(logs["loss"]) == pytest.approx(float(ref_logs["loss"]), rel=1e-6)
    assert float(logs["grad_norm"]) == pytest.approx(float(norm), rel=1e-5)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=n)


def test_train_step_stops_on_non_finite_loss_before_touching_weights():
    from joint.errors import NonFiniteLossError
    from joint.step import train_step

    m = _tiny_model()
    before = {k: v.clone() for k, v in m.state_dict().items() if v.dtype.is_floating_point}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    bad = {"image": torch.full((4, 3, 32, 32), float("nan")), "label": torch.tensor([0, 1, 2, 0])}
    with pytest.raises(NonFiniteLossError, match="non-finite loss \\(term '"):
        train_step(m, bad, opt)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k)


def test_flip_batch_mirrors_landmarks_with_the_image():
    """A bright pixel at landmark 36 (left eye corner) lands, after the flip, where the mirrored landmark
    set puts point 45 (the right eye corner, its mirror partner)."""
    from joint.step import IBUG68_MIRROR, flip_batch

    assert [IBUG68_MIRROR[i] for i in IBUG68_MIRROR] == list(range(68))  # an involution
    img = torch.zeros(2, 3, 32, 32)
    lm = torch.rand(2, 68, 2) * 31
    lm[:, 36] = torch.tensor([5.0, 9.0])
    img[:, :, 9, 5] = 1.0
    out = flip_batch({"image": img, "landmarks": lm, "coeffs": torch.zeros(2, 4)}, torch.tensor([True, False]))
    assert "coeffs" not in out and torch.equal(out["image"][1], img[1]) and torch.equal(out["landmarks"][1], lm[1])
    y, x = (out["image"][0, 0] == 1).nonzero()[0].tolist()
    # pixel centre convention: x -> W - x maps pixel column 5 (centre 5.5) to 26 (centre 26.5)
    assert (y, x) == (9, 26) and out["landmarks"][0, 45].tolist() == [32 - 5.0, 9.0]
