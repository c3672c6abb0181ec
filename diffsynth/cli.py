"""The `diffsynth` command."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import run_main, strip_debug_flag


def cmd_train(argv: list[str]) -> int:
    from .command_line import config_from_args
    config = config_from_args(argv)  # before the training stack imports: a flag error comes at once
    from .training.loop import run_training
    result = run_training(config)
    if config.train.task != "sft:data_process":  # that task only encodes, and says so itself
        print(f"trained {result.steps} steps; checkpoints: {result.checkpoints}")
    return 0


def cmd_params(args, rest: list[str]) -> int:
    from .command_line import config_from_args, dump_params
    config = config_from_args(rest)
    sys.stdout.write(dump_params(config))
    return 0


def cmd_tiny_model(args) -> int:
    from . import families  # noqa: F401  (registers every family's tiny twins)
    from .models.tiny import resolve_tiny_preset, write_tiny_model
    preset = resolve_tiny_preset(args.family)
    out = write_tiny_model(preset, args.out, seed=args.seed)
    print(f"wrote tiny {preset} preset to {out}")
    return 0


def cmd_families(args) -> int:
    """Every registered family (name, aliases, extra inputs, tiny presets), then DiffSynth's recipes per family:
    with a preset, run by flags, refused and why."""
    from .families import all_specs
    from .coverage import coverage, format_coverage
    for spec in all_specs():
        print(f"{spec.name}: {spec.summary}")
        own = vars(spec)  # a variant lists its own aliases and twins
        for label, values in (("aliases", own.get("aliases", ())), ("extra inputs", spec.extra_inputs),
                              ("tiny presets", tuple(own.get("tiny_twins", {})))):
            print(f"  {label}: {', '.join(values) or '-'}")
        if spec.variant_of:
            print(f"  variant of {spec.variant_of}, chosen by --extra_inputs {spec.selected_by}")
    print()
    print(format_coverage(coverage(), details=not args.summary))
    return 0


def cmd_data_validate(args) -> int:
    from .command_line import config_from_args
    from .data.validate import check_dataset
    from .families import spec_for
    config = config_from_args(args.rest, check=False)
    report_path = Path(args.report)
    rules = spec_for(config).data_rules(config).as_kwargs()
    report = check_dataset(config, metadata_out=report_path.with_suffix(".metadata.jsonl"), report_out=report_path,
                           plot_out=report_path.with_suffix(".resolutions.csv"), **rules)
    print(report.summary(config.dataset.on_invalid))
    return 1 if report.failed(config.dataset.on_invalid) else 0


def cmd_export(args) -> int:
    from .export import export_lora
    exported = export_lora(args.checkpoint, args.out, args.format, args.family, args.lora_alpha)
    print(f"wrote {len(exported)} tensors ({args.format} names, {args.family}) to {args.out}")
    return 0


def cmd_summary(args) -> int:
    """What `make run` produced and how to look at it."""
    from .tracking import default_tracking_uri
    metrics = Path("outputs/train/metrics.json")
    compat = Path("reports/lora_compat.json")
    print("\nResults")
    if metrics.exists():
        m = json.loads(metrics.read_text())
        print(f"  training:   {m['steps']} steps, val_loss {m['val_loss_initial']:.4f} -> {m['val_loss']:.4f}"
              f"  ({metrics})")
        print(f"  checkpoint: {m['last_checkpoint']}")
    if compat.exists():
        c = json.loads(compat.read_text())
        for fmt, record in c.get("formats", {}).items():
            print(f"  export:     {record['file']} ({fmt}; {record['tensors']} tensors, "
                  f"{record['unmatched_modules']} unmatched modules)")
        if "model" in c:
            print(f"  model:      {c['model']['folder']} (diffusers from_pretrained folder)")
    print("  data report: reports/data.json")
    print(f"\nMLflow UI:  .venv/bin/mlflow ui --backend-store-uri {default_tracking_uri()}  (then open http://127.0.0.1:5000)")
    print("DVC:        .venv/bin/dvc metrics show; .venv/bin/dvc exp run --set-param train.learning_rate=0.001")
    return 0


def cmd_plan(args) -> int:
    """The memory plan of params files (meta-device models: no weights are read or downloaded)."""
    from .files import write_json
    from .plan import format_plan, format_summary, plan_for_file, resolve_params_path
    from .presets import preset_params
    paths = [resolve_params_path(p) for p in (args.params or [None])]
    if args.summary:
        # shared overlays (presets/base.yaml) name no model: a glob over presets/ skips them
        recipes = [p for p in paths if preset_params(p)["model"].get("model_id_with_origin_paths")
                   or preset_params(p)["model"].get("model_paths")]
        if args.markdown:
            from .plan import memory_page
            Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
            Path(args.markdown).write_text(memory_page(recipes, args.frames))
            print(f"wrote {args.markdown}")
            return 0
        sys.stdout.write(format_summary([(p.stem, plan_for_file(p), plan_for_file(p, fp8_dit=True)) for p in recipes]))
        from .plan_fit import format_fit_summary
        sys.stdout.write("\n" + format_fit_summary([(p.stem, plan_for_file(p, num_frames=args.frames))
                                                    for p in recipes]))
        return 0
    plans = [plan_for_file(p, fp8_dit=args.fp8) for p in paths]
    for plan in plans:
        sys.stdout.write(format_plan(plan) + "\n")
    if args.json:
        write_json(args.json, plans[0] if len(plans) == 1 else plans)
    return 0


def cmd_preset(args) -> int:
    from .errors import ConfigError
    from .presets import write_preset
    try:
        out = write_preset(args.name, args.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} from preset {args.name}; run `dvc repro` to train it")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Known errors (config, data, model files, tracking, export) end as one line and exit code 2; ``--debug``
    anywhere on the command line, or DIFFSYNTH_DEBUG=1, shows their traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_main(lambda: _main(strip_debug_flag(argv)), argv)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["train"]:
        return cmd_train(argv[1:])
    parser = argparse.ArgumentParser(prog="diffsynth", description=__doc__,
                                     epilog="--debug (or DIFFSYNTH_DEBUG=1): show the traceback of known errors")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train with DiffSynth's train.py flags (see `diffsynth train --help`)")
    p = sub.add_parser("params", help="print the params.yaml that a DiffSynth command line means")
    p.add_argument("--from-args", action="store_true", required=True,
                   help="the remaining arguments are DiffSynth train.py flags")
    p = sub.add_parser("preset", help="write the full params.yaml of a preset (presets/<name>.yaml or a file)")
    p.add_argument("name", help="a preset file or a name under presets/: flux.1-dev-lora, tiny/flux.1-dev-lora, ...")
    p.add_argument("--out", default="params.yaml", help="where to write it (default params.yaml)")
    p = sub.add_parser("tiny-model", help="write a tiny random model in the real repository layout")
    p.add_argument("--family", required=True, help="a family name or alias (its default twin) or a tiny preset name, "
                                                   "as params.yaml writes them: qwen_image, wan2.2-ti2v-5b, ...")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    v = dsub.add_parser("validate", help="validate a dataset (DiffSynth dataset flags)")
    v.add_argument("--report", default="reports/data.json")
    p = sub.add_parser("export", help="convert a checkpoint to another LoRA format")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", default="diffusers", choices=["diffsynth", "diffusers", "comfyui", "kohya"],
                   help="diffusers: transformer.* (load_lora_weights); comfyui: diffusion_model.<original names> "
                        "+ .alpha; kohya: lora_unet_*; diffsynth: <module>.lora_A.default.weight")
    p.add_argument("--family", default=None, help="the family whose original names comfyui/kohya use "
                                                  "(`diffsynth families` lists them)")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="the lora_alpha the LoRA was trained with (default: rank, DiffSynth's fixed choice)")
    p.add_argument("--out", required=True)
    sub.add_parser("summary", help="print where the pipeline's results are")
    sub.add_parser("flags", help="print every DiffSynth flag, its params.yaml key and its status (markdown)")
    p = sub.add_parser("families", help="list the model families, their aliases, extra inputs and tiny presets, "
                                        "and which of DiffSynth's recipes run here (preset, flags or refused)")
    p.add_argument("--summary", action="store_true", help="the coverage counts only, not each recipe")
    p = sub.add_parser("plan", help="bytes each stage holds (models, LoRA, gradients, AdamW) for the params, "
                                    "cached and online; built on the meta device, no weights needed")
    p.add_argument("--params", nargs="+", default=None,
                   help="params files or preset names (default params.yaml); overlays of the defaults work too")
    p.add_argument("--fp8", action="store_true", help="also store the DiT in fp8 (adds it to model.fp8_models)")
    p.add_argument("--summary", action="store_true",
                   help="one line per params file: train-stage GB cached/online, with and without an fp8 DiT")
    p.add_argument("--json", default=None, help="also write the plan as JSON here")
    p.add_argument("--markdown", default=None, help="with --summary: write the memory page (docs/memory.md) here")
    p.add_argument("--frames", type=int, default=None, help="with --summary: video presets at this many frames")
    args, rest = parser.parse_known_args(argv)
    if args.command == "params":
        return cmd_params(args, rest)
    if args.command == "data":
        args.rest = rest
        return cmd_data_validate(args)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "flags":
        from .command_line import flag_table
        print(flag_table())
        return 0
    return {"preset": cmd_preset, "tiny-model": cmd_tiny_model, "export": cmd_export, "summary": cmd_summary,
            "families": cmd_families, "plan": cmd_plan}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
