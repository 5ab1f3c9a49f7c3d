"""Fixtures shared by several test files (helpers they share live in tests/helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Many small tensor ops: one intra-op thread is much faster on a shared, busy CPU. Opt in per module
    with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_faces(tmp_path_factory):
    """The folder holding faces/ (5 people x 3 noisy 48 px patterns) that the tiny runs train on."""
    from helpers import SIZE, write_faces

    tmp = tmp_path_factory.mktemp("tiny_runs")
    write_faces(tmp / "faces", 5, 3, size=SIZE)
    return tmp


def _tiny_run(tmp, mode: str):
    from helpers import train_tiny

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny(tmp, mode)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run_rgb(tiny_faces):
    """A 3-step RGB run (helpers.train_tiny), trained once per session; read it, never write into it."""
    return _tiny_run(tiny_faces, "rgb")


@pytest.fixture(scope="session")
def tiny_run_rgbcd(tiny_faces):
    """A 3-step rgb+canonical+depth run (with a coefficient regressor), trained once per session."""
    return _tiny_run(tiny_faces, "rgb+canonical+depth")
