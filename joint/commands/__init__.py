"""Sub-commands of `lh2face` (joint.cli). Each is a module `joint.commands.<name>` with NAME, HELP,
add_arguments(parser) and run(args) -> int, nothing else public. Add a module's name to COMMANDS to
expose it; a listed module that is missing or cannot be imported is named on every call (a warning) and
running it exits 2 with the reason, instead of breaking the others.
"""

COMMANDS = [
    "train",
    "eval",
    "synth",
    "export",
    "visualize",
    "landmarks",
    "align",
    "study",
    "report",
    "embed",
    "export_onnx",
]
