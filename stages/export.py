"""DVC stage `export`: write the final LoRA in diffusers format, check every key against the base DiT's
modules (lora_compat.json; any unmatched key fails the stage), and log both into the training's MLflow run."""
import json
import os
import sys
from pathlib import Path

from _layout import LORA_COMPAT, TRAIN_METRICS, TRAIN_RUN
from diffsynth.config import load_params
from diffsynth.export import check_against_model, export_lora
from diffsynth.files import write_json
from diffsynth.models.components import empty_component
from diffsynth.models.model_config import fetch, parse_model_configs
from diffsynth.tracking import Tracker


def main() -> int:
    os.environ["DIFFSYNTH_SKIP_DOWNLOAD"] = "true"  # the models stage fetched and pinned every file
    config = load_params()
    checkpoint = json.loads(TRAIN_METRICS.read_text())["last_checkpoint"]
    out_file = Path(config.export.out_dir) / "pytorch_lora_weights.safetensors"
    exported = export_lora(checkpoint, out_file, config.export.format)
    configs = [fetch(c) for c in parse_model_configs(config.model.model_paths, config.model.model_id_with_origin_paths)]
    base = empty_component(configs, config.model.family, config.lora.lora_base_model or "dit")
    compat = {"format": config.export.format, "checkpoint": checkpoint, **check_against_model(exported, base)}
    write_json(LORA_COMPAT, compat)
    run = json.loads(TRAIN_RUN.read_text())
    if run.get("run_id"):
        tracker = Tracker(config.tracking.experiment, run.get("tracking_uri") or config.tracking.uri)
        tracker.start(run_id=run["run_id"])
        tracker.log_artifact(out_file, "export")
        tracker.log_artifact(LORA_COMPAT, "export")
        tracker.log_metrics({"export/unmatched_modules": compat["unmatched_modules"]}, step=0)
        tracker.finish()
    print(f"[export] {out_file}: {compat['tensors']} tensors, {compat['matched_modules']} modules matched, "
          f"{compat['unmatched_modules']} unmatched")
    if compat["unmatched_modules"]:
        print(f"LoRA keys target modules the base model does not have: {compat['unmatched'][:10]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
