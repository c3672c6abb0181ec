"""DVC stage `data`: validate every row of the dataset, write the report (metrics + resolution plot) and
the metadata that training uses. Exits non-zero, listing the bad rows, when dataset.on_invalid is error."""
import sys

from _layout import DATA_REPORT, DATA_RESOLUTIONS, VALIDATED_METADATA
from diffsynth.config import load_params
from diffsynth.data.validate import check_dataset
from diffsynth.families import get_family


def main() -> int:
    config = load_params()
    factor = get_family(config.model.family).HEIGHT_FACTOR
    report = check_dataset(config, factor, VALIDATED_METADATA, DATA_REPORT, DATA_RESOLUTIONS)
    print(report.summary())
    if report.invalid_rows and config.dataset.on_invalid == "error":
        print("Invalid rows found and dataset.on_invalid is 'error': fix them, or set dataset.on_invalid: skip "
              "to train on the valid rows.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
