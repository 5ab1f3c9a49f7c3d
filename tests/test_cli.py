"""`lh2face` command line: dispatch, help, error exits, `eval` on a trained run, `train --nproc` spawning."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import write_faces
from joint.cli import load_commands, main

ROOT = Path(__file__).resolve().parents[1]
_faces = write_faces  # the shared tiny ImageFolder (tests/helpers.py)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from joint.config import load_train_config
    from joint.train import train

    tmp = tmp_path_factory.mktemp("cli")
    faces = _faces(tmp / "faces", 5, 4)
    cfg = load_train_config(None, [
        f"data.root={faces}", "data.train_identities=3", "data.image_size=32", "model.embedding_size=16",
        "model.head=arcface", "schedule.steps=3", "schedule.batch_size=6", "schedule.warmup_steps=1",
        "schedule.checkpoint_every=0", "eval.n_folds=2", "run.progress=false", "run.tensorboard=false",
        "run.plots=false", "run.threads=1", "run.device=cpu",
    ])
    out = tmp / "run"
    train(cfg, out=str(out))
    return out, tmp


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in ("train", "eval", "study", "report"):
        assert name in text
    for name in ("train", "eval", "study", "report"):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
    for gone in ("no-such-command", "modes"):  # modes is a study preset now (configs/study_modes.yaml)
        with pytest.raises(SystemExit) as e:
            main([gone])
        assert e.value.code == 2
    assert main([]) == 2  # no command: help, exit 2


def test_console_script_runs():
    rc = subprocess.run([str(Path(sys.executable).parent / "lh2face"), "train", "--help"],
                        capture_output=True, text=True, timeout=120)
    assert rc.returncode == 0 and "--resume" in rc.stdout and "--nproc" in rc.stdout


def test_every_listed_command_follows_the_pattern():
    from joint.commands import COMMANDS

    mods, errors = load_commands()
    assert not errors and sorted(m.__name__.rsplit(".", 1)[1] for m in mods.values()) == sorted(COMMANDS)
    for mod in mods.values():
        assert mod.NAME == mod.__name__.rsplit(".", 1)[1].replace("_", "-")  # module export_onnx -> export-onnx
        assert isinstance(mod.NAME, str) and isinstance(mod.HELP, str) and callable(mod.add_arguments)
        assert callable(mod.run) and not hasattr(mod, "main")


def test_listed_command_that_fails_to_import_is_an_error_naming_it(monkeypatch, capsys):
    """A listed module that does not exist or raises on import is never dropped silently: `lh2face`
    names it on every call, and running it exits 2 with the reason."""
    import joint.commands as jc

    mods, errors = load_commands(["train", "not_written_yet"])
    assert list(mods) == ["train"] and "joint.commands.not_written_yet" in errors["not_written_yet"]
    monkeypatch.setattr(jc, "COMMANDS", ["train", "not_written_yet"])
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "not_written_yet" in capsys.readouterr().err
    assert main(["not_written_yet"]) == 2
    err = capsys.readouterr().err
    assert "error: sub-command 'not_written_yet' is unavailable" in err and "failed to import" in err


def test_load_commands_absent_and_broken(monkeypatch):
    fake = types.ModuleType("joint.commands.halfdone")
    fake.NAME = "halfdone"
    monkeypatch.setitem(sys.modules, "joint.commands.halfdone", fake)
    mods, errors = load_commands(["halfdone"])
    assert not mods and "lacks HELP, add_arguments, run" in errors["halfdone"]


def test_broken_command_reports_instead_of_crashing(monkeypatch, capsys):
    import joint.commands as jc

    fake = types.ModuleType("joint.commands.halfdone")
    monkeypatch.setitem(sys.modules, "joint.commands.halfdone", fake)
    monkeypatch.setattr(jc, "COMMANDS", ["train", "halfdone"])
    assert main(["halfdone"]) == 2
    assert "unavailable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])  # the others still work
    assert e.value.code == 0


def test_eval_folder_counts_pairs(trained_run, capsys, tmp_path):
    run, tmp = trained_run
    faces = _faces(tmp_path / "held", 3, 4, seed=9)
    assert main(["eval", "--model", str(run), "--folder", str(faces), "--folds", "2", "--out", str(tmp_path / "ev")]) == 0
    text = capsys.readouterr().out
    # 12 images: C(12,2) = 66 pairs, of which 3 * C(4,2) = 18 genuine
    assert "66 pairs, 18 genuine" in text
    res = json.loads((tmp_path / "ev" / "result.json").read_text())
    assert res["pairs"] == 66 and 0.0 <= res["accuracy"] <= 1.0
    assert (tmp_path / "ev" / "roc.png").is_file()


def test_eval_bin_identical_pairs_are_perfect(trained_run, capsys, tmp_path):
    """Genuine pairs are the same image twice (cosine exactly 1), impostors two different random images:
    any model separates them perfectly, so accuracy and every TAR@FAR must be 1."""
    from recognition.data import write_verification_bin

    run, _ = trained_run
    rng = np.random.default_rng(4)

    def png(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    bins, issame = [], []
    for k in range(40):
        a = png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        if k % 2 == 0:
            bins += [a, a]
            issame.append(True)
        else:
            bins += [a, png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))]
            issame.append(False)
    path = tmp_path / "pairs.bin"
    write_verification_bin(path, bins, issame)
    assert main(["eval", "--model", str(run), "--bin", str(path), "--folds", "4", "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    assert res["accuracy"] == 1.0 and res["pairs"] == 40 and res["genuine"] == 20
    assert res["tar@far=1e-01"] == 1.0  # 20 impostors resolve FAR down to 0.05 only


def test_eval_errors(trained_run, tmp_path, capsys):
    run, _ = trained_run
    assert main(["eval", "--model", str(tmp_path / "nothing"), "--folder", str(tmp_path)]) == 2
    assert "error: --model" in capsys.readouterr().err
    assert main(["eval", "--model", str(run)]) == 2  # no data given
    assert "give --folder" in capsys.readouterr().err
    assert main(["eval", "ijb", "--model", str(run)]) == 2
    assert "--root" in capsys.readouterr().err


def test_train_nproc_spawns_torchrun(monkeypatch, tmp_path):
    import subprocess as sp

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"root": str(ROOT / "assets" / "att_faces")}}))
    seen = {}
    monkeypatch.setattr(sp, "call", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", "--config", str(cfg), "--nproc", "3", "--out", "x", "-o", "optim.lr=0.1"]) == 0
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    assert cmd[5:7] == ["-m", "joint.train"] and "--out" in cmd and "optim.lr=0.1" in cmd


def test_eval_lfw_pairs_same_image_pairs_are_perfect(trained_run, tmp_path):
    """LFW layout; matched pairs name the same file twice, mismatched pairs two different people."""
    run, _ = trained_run
    rng = np.random.default_rng(2)
    names = [f"Person_{i}" for i in range(6)]
    for n in names:
        (tmp_path / "lfw" / n).mkdir(parents=True)
        for k in (1, 2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "lfw" / n / f"{n}_{k:04d}.png")
    lines = ["2\t5"]
    for fold in range(2):
        lines += [f"{names[(fold * 5 + i) % 6]}\t1\t1" for i in range(5)]
        lines += [f"{names[i]}\t1\t{names[(i + 1 + fold) % 6]}\t2" for i in range(5)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    assert main(["eval", "--model", str(run), "--lfw-pairs", str(tmp_path / "pairs.txt"), "--lfw-root",
                 str(tmp_path / "lfw"), "--lfw-ext", "png", "--folds", "2", "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    assert res["pairs"] == 20 and res["genuine"] == 10 and res["accuracy"] == 1.0


def test_eval_ijb_delegates_to_the_protocol(trained_run, tmp_path, capsys):
    from ijb_fixture import PAIRS, build_ijb_fixture

    run, _ = trained_run
    build_ijb_fixture(tmp_path / "ijb", target="IJBB", mode="aligned")
    out = tmp_path / "o"
    assert main(["eval", "ijb", "--model", str(run), "--root", str(tmp_path / "ijb"), "--target", "IJBB",
                 "--batch-size", "4", "--out", str(out)]) == 0
    res = json.loads((out / "ijbb_result.json").read_text())
    assert res["n_pairs"] == len(PAIRS) and res["n_genuine"] == sum(p[2] for p in PAIRS)
    assert (out / "ijbb_roc.png").is_file() and "TAR" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["synth", "--identities", "2", "--images", "1", "--out", "OUT"], ["embed", "--model", "RUN", "x.png", "--out", "OUT"]])
def test_bad_threads_is_one_error_before_any_work(argv, tmp_path, capsys):
    """The dispatcher applies --threads for every command that has it: a value < 1 is exit 2, nothing written."""
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main([*argv, "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
