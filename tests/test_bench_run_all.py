"""bench/run_all.py's page: hand-written sections (KEEP_MARK) survive a rewrite, generated ones are replaced.

Truth: a page written here with one marked and one unmarked section, and a summary with a failed benchmark
(no benchmark is run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", ROOT / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rewrite_keeps_marked_sections_only():
    ra = _run_all()
    old = "\n".join(["# lh2face benchmarks", "", "## 4. Joint training step vs FR-only step", "", "old table", "",
                     "## 7. Notes", "", ra.KEEP_MARK, "", "| a | b |", "", "### detail", "kept text", "",
                     "## 8. Stale", "", "dropped text"])
    keep = ra.kept_sections(old)
    assert len(keep) == 1 and keep[0].startswith("## 7. Notes") and "### detail\nkept text" in keep[0]
    machine = {"cpu_model": "x", "cpus_usable": 1, "cpu_count": 1, "device": "cpu", "python": "3", "torch": "t",
               "numpy": "n", "numba": None, "date_utc": "now"}
    rec = {"name": "profile", "command": "python bench/profile_joint.py", "wall_s": 1.0, "load_before": [0, 0, 0],
           "load_after": [0, 0, 0], "error": ["boom"]}
    page = ra.markdown({"command": "python bench/run_all.py", "quick": True, "threads": 1, "machine": machine,
                        "benches": [rec]}, keep)
    assert "## 6. Joint step profile" in page and "FAILED: boom" in page
    assert page.index("## 6.") < page.index("## 7. Notes") and "kept text" in page
    assert "old table" not in page and "dropped text" not in page
    assert ra.kept_sections(page) == keep  # a second rewrite keeps it again, unchanged


def test_benchmark_page_marks_its_hand_written_section():
    ra = _run_all()
    keep = ra.kept_sections((ROOT / "docs" / "BENCH.md").read_text())
    assert any("The joint step: breakdown and speed-up" in k for k in keep)
