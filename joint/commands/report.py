"""`lh2face report PHOTOS... --out DIR`: detect, align and fit each photo, then write one static HTML page
(inputs with landmarks, fitted overlays, canonical faces, depth, per-image NME and loss curves, and a list
of skipped files with the reason). The work is recon.report's; this module only exposes it.
"""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "reconstruct photos (files or folders) and write an HTML report (index.html + images/)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recon.report import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    from recon.report import run as run_report

    return run_report(args)
