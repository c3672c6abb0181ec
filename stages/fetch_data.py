"""DVC stage `fetch_data`: generate the built-in sample dataset or download a ModelScope dataset into
data/fetched. A local dataset needs no fetching (the folder is written with a note only)."""
import sys

from _layout import FETCHED_DATA
from diffsynth.config import load_params
from diffsynth.errors import run_main
from diffsynth.data.sources import fetch_dataset


def main() -> int:
    config = load_params()
    fetch_dataset(config.dataset, FETCHED_DATA)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))  # known errors: one line, no traceback
