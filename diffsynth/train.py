"""`accelerate launch -m diffsynth.train [DiffSynth train.py flags]`."""
import sys

from .cli import cmd_train

if __name__ == "__main__":
    sys.exit(cmd_train(sys.argv[1:]))
