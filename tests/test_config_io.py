"""lh2face.config (strict YAML -> dataclasses, overrides), lh2face.io (atomic writes, checkpoints with checksum,
images) and joint.config (TrainConfig validation)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional

import numpy as np
import pytest
import torch
import yaml

from lh2face.config import ConfigError, dump_yaml, from_dict, load_config, merge_overrides, parse_override
from lh2face.io import (
    CheckpointError,
    ImageReadError,
    atomic_write,
    load_checkpoint,
    read_image,
    save_checkpoint,
    save_image,
    write_json_atomic,
)


@dataclass
class Inner:
    lr: float = 0.1
    steps: int = 10
    name: Literal["a", "b"] = "a"
    tags: List[str] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    path: Optional[str] = None
    opts: Dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ config


def test_from_dict_types_and_defaults():
    cfg = from_dict(Outer, {"inner": {"lr": "1e-3", "steps": 5.0, "tags": ["x"]}, "flag": True})
    assert cfg.inner.lr == pytest.approx(1e-3) and isinstance(cfg.inner.lr, float)  # YAML reads 1e-3 as str
    assert cfg.inner.steps == 5 and isinstance(cfg.inner.steps, int)
    assert cfg.inner.name == "a" and cfg.inner.tags == ["x"] and cfg.flag is True and cfg.path is None


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"inner": {"lrr": 1}}, "inner.lrr"),
        ({"extra": 1}, "extra"),
        ({"inner": {"steps": 2.5}}, "inner.steps"),
        ({"inner": {"steps": True}}, "inner.steps"),
        ({"flag": "yes"}, "flag"),
        ({"inner": {"name": "c"}}, "inner.name"),
        ({"inner": 3}, "inner"),
        ({"opts": {"k": "v"}}, "opts.k"),
    ],
)
def test_from_dict_errors_name_the_key(data, needle):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert needle in str(err.value)


def test_overrides_and_yaml_round_trip(tmp_path):
    assert parse_override("inner.lr=0.5") == (["inner", "lr"], 0.5)
    assert parse_override("inner.tags=[a, b]") == (["inner", "tags"], ["a", "b"])
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")
    merged = merge_overrides({"inner": {"lr": 1.0}}, ["inner.steps=3", "flag=true"])
    assert merged == {"inner": {"lr": 1.0, "steps": 3}, "flag": True}
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  lr: 0.2\n")
    cfg = load_config(p, Outer, overrides=["inner.name=b"])
    assert cfg.inner.lr == 0.2 and cfg.inner.name == "b"
    again = from_dict(Outer, yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", Outer)
    (tmp_path / "bad.yaml").write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml", Outer)


# ---------------------------------------------------------------------------------------------- io


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as fh:
            fh.write("new, half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]  # no temporary left behind
    write_json_atomic(tmp_path / "j.json", {"a": np.float32(1.5), "b": np.arange(2)})
    assert yaml.safe_load((tmp_path / "j.json").read_text()) == {"a": 1.5, "b": [0, 1]}


def test_json_non_finite_values_become_null(tmp_path):
    """JSON has no NaN / Infinity literal: strict parsers reject them, so they are written as null, at any
    depth and from any number type (float, numpy scalar / array, torch tensor)."""
    import json

    obj = {"nan": float("nan"), "inf": float("inf"), "ok": 2.5, "nested": [1.0, {"x": -float("inf")}],
           "np": np.float64("nan"), "np32": np.float32("inf"), "arr": np.array([1.0, np.nan]),
           "t": torch.tensor([np.inf, 3.0]), "tup": (float("nan"), 1), "flag": True}
    write_json_atomic(tmp_path / "r.json", obj)
    text = (tmp_path / "r.json").read_text()

    def strict(const):
        raise ValueError(f"non-JSON literal {const}")

    back = json.loads(text, parse_constant=strict)
    assert back == {"nan": None, "inf": None, "ok": 2.5, "nested": [1.0, {"x": None}], "np": None, "np32": None,
                    "arr": [1.0, None], "t": [None, 3.0], "tup": [None, 1], "flag": True}


def test_checkpoint_round_trip_and_corruption(tmp_path):
    p = tmp_path / "c.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
    save_checkpoint(p, state)
    back = load_checkpoint(p)
    assert torch.equal(back["w"], state["w"]) and back["step"] == 7
    raw = p.read_bytes()
    p.write_bytes(raw[:-1])  # truncated
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
    flipped = bytearray(raw)
    flipped[len(flipped) // 2] ^= 0x01  # one bit flipped in the payload
    p.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(p)
    p.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "none.pt")


def test_images_round_trip_and_errors(tmp_path):
    img = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    save_image(tmp_path / "a.png", img)
    assert np.array_equal(read_image(tmp_path / "a.png"), img)
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    save_image(tmp_path / "g.png", grey)
    rgb = read_image(tmp_path / "g.png")
    assert rgb.shape == (4, 5, 3) and np.array_equal(rgb[..., 1], grey)
    f = torch.full((3, 2, 2), 0.5)
    save_image(tmp_path / "f.png", f)
    assert np.all(read_image(tmp_path / "f.png") == 128)
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="zero.png"):
        read_image(tmp_path / "zero.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(tmp_path / "junk.png")


# ------------------------------------------------------------------------------------ TrainConfig


def test_train_config_validation(tmp_path):
    from joint.config import load_train_config

    cfg = load_train_config(None, ["data.root=assets/att_faces"])
    assert cfg.model.input_mode == "rgb" and not cfg.uses_recon
    assert load_train_config(None, ["loss.canon=0.5"]).uses_recon
    faults = {
        "schedule.steps=0": "schedule.steps",
        "model.input_mode=depth": "model.input_mode",
        "data.kind=recordio": "data.rec",
        f"data.root={tmp_path / 'nowhere'}": "data.root",
        "model.head=nohead": "nohead",
        "model.backbone=nonet": "nonet",
        "optim.name=lion": "optim.name",
        "schedule.keep_checkpoints=1": "keep_checkpoints",
        "model.head_options={q: 1}": "model.head_options",
    }
    for override, needle in faults.items():
        with pytest.raises(ConfigError) as err:
            load_train_config(None, [override])
        assert needle in str(err.value), override


def test_shipped_configs_load():
    from joint.config import load_train_config

    root = Path(__file__).resolve().parents[1] / "configs"
    # the training configs (configs/study_*.yaml are joint.study's own format)
    names = ["demo.yaml", "demo_att.yaml", "demo_arcface.yaml", "ms1mv2_r50_lh2face.yaml", "joint_webface_r50.yaml"]
    for name in names:
        cfg = load_train_config(root / name, check_paths=False)
        if name.startswith("demo"):  # the demos run on bundled / generated data: paths must resolve
            load_train_config(root / name)
        assert cfg.model.backbone and cfg.schedule.steps > 0


def test_config_from_checkpoint_ignores_retired_keys():
    from lh2face.config import to_dict

    from joint.config import TrainConfig, config_from_checkpoint

    d = to_dict(TrainConfig())
    d["data"]["retired_option"] = 1
    d["model"]["head"] = "arcface"
    cfg = config_from_checkpoint(d)
    assert cfg.model.head == "arcface" and not hasattr(cfg.data, "retired_option")
    with pytest.raises(ConfigError):  # still typed
        config_from_checkpoint({"schedule": {"steps": "many"}})
