"""`lh2face study --jobs N`: a failing worker process makes the command fail (it used to exit 0)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_failed_workers_give_exit_code_1(tmp_path):
    root = tmp_path / "corrupt"  # passes the config check (the folder exists); training it fails in the worker
    for person in ("a", "b", "c"):
        (root / person).mkdir(parents=True)
        for k in range(2):
            (root / person / f"{k}.png").write_bytes(b"not a png")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "joint.cli", "study", "--config", str(ROOT / "configs" / "study_modes.yaml"),
           "--out", str(tmp_path / "study"), "--jobs", "2", "-o", "train.data.kind=imagefolder",
           "-o", f"train.data.root={root}", "-o", "train.data.train_identities=2",
           "-o", "train.data.eval_identities=1", "-o", "study.input_modes=[rgb]"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert "error: worker exit codes [" in res.stderr
    assert "0 of 1 planned runs finished" in res.stdout
