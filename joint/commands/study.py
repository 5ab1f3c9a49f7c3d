"""`lh2face study --config configs/study_synthetic.yaml [--out DIR] [--jobs 2] [--report-only]`.

The accuracy study (heads x input modes x seeds, LH2Face ablations) of `joint.study`; this sub-command
only forwards to it (`python -m joint.study` is the same). The quick input-mode ablation with step timing
on one training config is `lh2face modes`.
"""

from __future__ import annotations

import argparse

NAME = "study"
HELP = "accuracy study from a study config (heads x input modes x seeds; see joint.study)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from joint.study import add_arguments as study_arguments

    study_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from joint.study import run_study

    return int(run_study(args) or 0)
