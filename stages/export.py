"""DVC stage `export`: write the final checkpoint in every `export.formats` entry (and, for a full fine-tune or
`export.merge_lora`, a diffusers model folder), check every key against the base model (reports/lora_compat.json;
any unmatched key fails the stage), and log the files into the training's MLflow run."""
import json
import os
import sys

from _layout import LORA_COMPAT, TRAIN_METRICS, TRAIN_RUN
from diffsynth.config import load_params, torch_dtype
from diffsynth.errors import run_main
from diffsynth.export import base_model, export_checkpoint
from diffsynth.families import spec_for
from diffsynth.files import write_json
from diffsynth.models.model_config import fetch, parse_model_configs
from diffsynth.tracking import Tracker


def main() -> int:
    os.environ["DIFFSYNTH_SKIP_DOWNLOAD"] = "true"  # the models stage fetched and pinned every file
    config = load_params()
    checkpoint = json.loads(TRAIN_METRICS.read_text())["last_checkpoint"]
    # the trained model: the LoRA's base, or a full fine-tune's one trainable model (speed control: motion_controller)
    trained = [m.strip() for m in (config.train.trainable_models or "").split(",") if m.strip()]
    family = spec_for(config)
    component = config.lora.lora_base_model or (trained[0] if len(trained) == 1 else "dit")
    configs = [fetch(c) for c in parse_model_configs(config.model.model_paths, config.model.model_id_with_origin_paths)]
    meta, load_base = base_model(configs, family, component, torch_dtype(config.model.torch_dtype))
    result = export_checkpoint(checkpoint, config.export.out_dir, config.export.formats, family, meta,
                               lora_alpha=config.lora.lora_alpha, merge=config.export.merge_lora, load_base=load_base,
                               max_shard_size=config.export.max_shard_size)
    write_json(LORA_COMPAT, result.compat)
    run = json.loads(TRAIN_RUN.read_text())
    if run.get("run_id"):  # into the training's own run, so the LoRA sits beside its losses and samples
        tracker = Tracker(config.tracking.experiment, run.get("tracking_uri") or config.tracking.uri)
        tracker.start(run_id=run["run_id"])
        for path in result.files.values():
            tracker.log_artifact(path, "export")  # a folder is logged with its contents
        tracker.log_artifact(LORA_COMPAT, "export")
        tracker.log_metrics({f"export/{fmt}/unmatched_keys": r["unmatched_keys"]
                             for fmt, r in result.compat["formats"].items()}, step=0)
        tracker.finish()
    for fmt, record in result.compat["formats"].items():
        print(f"[export] {fmt}: {record['file']}: {record['tensors']} tensors, {record['matched_modules']} modules "
              f"matched, {record['unmatched_modules']} unmatched")
    if "model" in result.compat:
        print(f"[export] model folder: {result.compat['model']['folder']}")
    if not result.ok:
        bad = {fmt: r["unmatched"] for fmt, r in result.compat["formats"].items() if r["unmatched"]}
        print(f"[export] LoRA keys that fit no module of the base model (see {LORA_COMPAT}): "
              f"{json.dumps(bad, indent=1)[:2000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))  # known errors: one line, no traceback
