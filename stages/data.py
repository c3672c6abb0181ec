"""DVC stage `data`: validate every row of the dataset, write the report (metrics + resolution plot) and
the metadata that training uses. Exits non-zero, listing the bad rows, when dataset.on_invalid is error
(or when no row at all can be used)."""
import sys

from _layout import DATA_REPORT, DATA_RESOLUTIONS, VALIDATED_METADATA
from diffsynth.config import load_params
from diffsynth.errors import run_main
from diffsynth.data.validate import check_dataset
from diffsynth.families import spec_for


def main() -> int:
    config = load_params()
    report = check_dataset(config, metadata_out=VALIDATED_METADATA, report_out=DATA_REPORT,
                           plot_out=DATA_RESOLUTIONS, **spec_for(config).data_rules(config).as_kwargs())
    print(report.summary(config.dataset.on_invalid))
    print(f"report: {DATA_REPORT}")
    if report.fatal:
        print("The dataset cannot be used at all (see the problems above): fix the metadata or the dataset "
              "params; dataset.on_invalid: skip cannot help here.", file=sys.stderr)
        return 1
    if report.failed(config.dataset.on_invalid):
        print(f"{report.invalid_rows} invalid row(s) and dataset.on_invalid is 'error': fix them, or set "
              "dataset.on_invalid: skip to train on the valid rows.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))  # known errors: one line, no traceback
