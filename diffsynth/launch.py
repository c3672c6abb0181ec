"""`python -m diffsynth.launch <accelerate launch arguments>`: `accelerate launch`, without the launcher's traceback.

When a training process fails, it has already said why (one line for a known error, its own traceback for a
bug); `accelerate launch` then adds a traceback of its own (CalledProcessError, or torchrun's ChildFailedError
for multi-process configs) that only repeats "a process failed". This wrapper exits 1 instead.
DIFFSYNTH_DEBUG=1 (or accelerate's own ``--debug``) keeps the launcher's traceback.
"""
from __future__ import annotations

import subprocess
import sys

from .errors import debug_requested


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    debug = debug_requested() or getattr(args, "debug", False)  # accelerate's own --debug counts too
    try:
        launch_command(args)
    except subprocess.CalledProcessError:
        if debug:
            raise
        return 1
    except Exception as e:
        # torch.distributed.elastic's ChildFailedError; matched by name so no torch import is needed here
        if debug or type(e).__name__ != "ChildFailedError":
            raise
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
