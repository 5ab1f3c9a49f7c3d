"""The shipped real-photo study configs (configs/study_real_*.yaml, issue 10 item 6): they load, plan the
promised grid, and the rgb and rgb+canonical+depth runs of a head and seed differ in the input mode only
(same loss lambdas, same L_reco weights, same data and schedule); the align commands in their top comment
write where data.root reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lh2face.config import load_yaml, to_dict
from joint import study

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# (file, aligned folder, training identities, held-out identities)
REAL = [("study_real_att.yaml", "data/aligned/att", 30, 10), ("study_real_lfw.yaml", "data/aligned/lfw-dev", 14, 6)]


@pytest.mark.parametrize("name,root,n_train,n_eval", REAL)
def test_real_study_config(name, root, n_train, n_eval):
    path = CONFIGS / name
    raw = load_yaml(path)
    assert raw["train"]["data"]["root"] == root
    # data/ is made by `lh2face align` and git-ignored: validate against the bundled ImageFolder instead
    cfg = study.load_study_config(str(path), ["train.data.root=assets/att_faces"])
    runs = study.plan_runs(cfg)
    assert sorted({(r.head, r.mode, r.seed) for r in runs}) == sorted(
        (h, m, s) for h in ("lh2face", "arcface") for m in ("rgb", "rgb+canonical+depth") for s in (0, 1, 2))
    assert len(runs) == 12
    per_run = {(r.head, r.mode, r.seed): to_dict(study.run_config(cfg, r)) for r in runs}
    for (head, mode, seed), c in per_run.items():
        assert (c["loss"]["reco"], c["loss"]["canon"], c["loss"]["view"]) == (1.0, 0.0, 0.0), (head, mode, seed)
        assert c["recon"]["landmark"] > 0 if "landmark" in c["recon"] else c["recon"]["weights"]["landmark"] > 0
        assert (c["data"]["train_identities"], c["data"]["eval_identities"]) == (n_train, n_eval)
        if mode == "rgb":
            other = dict(per_run[(head, "rgb+canonical+depth", seed)])
            other["model"] = dict(other["model"], input_mode="rgb")
            assert c == other  # the two modes differ in the input mode only
    # the align command in the top comment writes the folder that data.root reads
    text = path.read_text()
    outs = re.findall(r"lh2face align \S+ --out (\S+)", text)
    assert outs == [root]
