"""DVC stage `train` (run under `accelerate launch`): train on the validated metadata, log to MLflow, write
DVC metrics and plots, and record the MLflow run for the export stage."""
import csv
import os
import sys

from _layout import (DATA_REPORT, MEMORY_PLAN, MODEL_MANIFEST, LOSS_PLOT, TRAIN_METRICS, TRAIN_RUN, VAL_PLOT,
                     VALIDATED_METADATA)
from diffsynth.config import load_params
from diffsynth.errors import run_main
from diffsynth.files import atomic_path, sha256_file, write_json
from diffsynth.plan import memory_plan
from diffsynth.tracking import run_tags
from diffsynth.training.loop import run_training
from _state_store import SlotStore, default_store, release


def write_plot(path, header, rows):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def main() -> int:
    os.environ["DIFFSYNTH_SKIP_DOWNLOAD"] = "true"  # the models stage fetched and pinned every file
    config = load_params()
    plan = memory_plan(config)  # before training: a plan that cannot be made fails the stage in seconds
    accelerate_config = f"configs/accelerate/{config.extra.get('accelerate', {}).get('config', 'single')}.yaml"
    tags = run_tags(config.model.family, config.model.tiny_preset,
                    {"data_report": sha256_file(DATA_REPORT), "model_manifest": sha256_file(MODEL_MANIFEST)})
    result = run_training(config, metadata_path=str(VALIDATED_METADATA), tags=tags,
                          log_files=["params.yaml", accelerate_config, str(DATA_REPORT), str(MODEL_MANIFEST)],
                          state_store=SlotStore(default_store()))  # outside the outputs: `dvc exp run` checks them out first
    if result.run_id is None and not result.loss_history:
        return 0  # not the main process
    val = [(step, m["val_loss"]) for step, m in result.val_history]
    metrics = {
        "steps": result.steps,
        "world_size": result.world_size,
        "final_loss": sum(v for _, v in result.loss_history[-10:]) / max(1, len(result.loss_history[-10:])),
        "val_loss_initial": val[0][1],
        "val_loss": val[-1][1],
        "last_checkpoint": result.checkpoints[-1] if result.checkpoints else None,
    }
    write_json(TRAIN_METRICS, metrics)
    write_json(MEMORY_PLAN, plan)
    write_plot(LOSS_PLOT, ["step", "loss"], result.loss_history)
    write_plot(VAL_PLOT, ["step", "val_loss"], val)
    write_json(TRAIN_RUN, {"run_id": result.run_id, "tracking_uri": result.tracking_uri})
    release(result.state_dir)  # outputs written; until here a re-run publishes them from the store
    print(f"[train] {result.steps} steps; val_loss {metrics['val_loss_initial']:.5f} -> {metrics['val_loss']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))  # known errors: one line, no traceback
