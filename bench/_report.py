"""What every benchmark script does last: stamp the result with the machine, print its table, save it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch


def finish(result: Dict[str, Any], device: torch.device, markdown: Callable[[Dict[str, Any]], str],
           out: Optional[Path]) -> int:
    """Add device, torch version, threads and load average to `result`, print markdown(result), and write
    `out` (JSON) plus `out` with suffix .md atomically when `out` is given. Returns exit code 0."""
    result.update(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                  device_name=torch.cuda.get_device_name(device) if device.type == "cuda"
                  else platform.processor() or "cpu",
                  load_average=os.getloadavg())
    md = markdown(result)
    print(md)
    if out is not None:
        from lh2face.io import write_json_atomic, write_text_atomic

        write_json_atomic(out, result)
        write_text_atomic(Path(out).with_suffix(".md"), md)
    return 0
