"""Sub-commands of `lh2face`. Each is a module `joint.commands.<name>` with NAME, HELP,
add_arguments(parser) and run(args) -> int. Add a module's name to COMMANDS to expose it; a listed
module that cannot be imported is reported by `lh2face <name>` instead of breaking the others.
"""

COMMANDS = [
    "train",
    "eval",
    "synth",
    "export",
    "visualize",
    "landmarks",
    "regressor",
    "study",
    "modes",
    "report",
]
