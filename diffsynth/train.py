"""`accelerate launch -m diffsynth.train [DiffSynth train.py flags]`."""
import sys

from .cli import cmd_train
from .errors import run_main, strip_debug_flag

if __name__ == "__main__":
    sys.exit(run_main(lambda: cmd_train(strip_debug_flag(sys.argv[1:])), sys.argv[1:]))
