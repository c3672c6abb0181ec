"""Write the presets of DiffSynth's Wan variant recipes (FLF2V, Fun-InP, Fun-Control, Fun-Control-Camera, speed
control; full and LoRA) and their tiny twins from the recipe table (``diffsynth/families/upstream_recipes.yaml``).

Usage: PYTHONPATH=. python tests/upstream/write_wan_presets.py [--force]

Each real preset is ``diffsynth params --from-args <the recipe's command>`` reduced to what differs from
``presets/base.yaml`` over the schema (tests/test_presets.py::test_overlays_list_only_what_the_recipe_sets), so
tests/test_upstream_recipes.py::test_each_preset_is_its_recipe_as_written holds by construction; a two-command
recipe (Wan2.2-A14B's high- and low-noise experts) gives one preset per command, "(command N of 2)" in its header.
Each twin extends its preset with the tiny model of the same architecture (VARIANTS) and the built-in
moving_shapes_conditioned clips, with the counts the other Wan twins use. Existing files are kept unless --force
(HAND_WRITTEN ones always).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffsynth.command_line import config_from_args
from diffsynth.coverage import is_split, recipe_argv
from diffsynth.config import config_from_dict
from diffsynth.families.upstream import table
from diffsynth.presets import preset_params

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "presets"
TRAINING = ("dataset", "resolution", "model", "train", "lora", "gradient", "output")

# recipe name (examples/wanvideo/model_training/{full,lora}/<name>.sh) -> (tiny twin, what conditions the model)
FLF = "first + last frame: input_image = video[0], end_image = video[-1]"
INP = "Wan-Fun inpainting, first + last frame: input_image = video[0], end_image = video[-1]"
CONTROL = "control video"
CONTROL_REF = "control video + reference image; Wan-Fun reference convolution"
CAMERA = "input image + camera move: direction, speed; Wan-Fun camera adapter"
SPEED = "motion_bucket_id through DiffSynth's motion controller"
ANIMATE = ("input image + pose clip + face clip (each the video's frames minus 4; the face clip at 512x512); "
           "DiffSynth's animate adapter")
ANIMATE2 = ("reference image + reference (driving) video + reference prompt; DiffSynth's in-context reference DiT, "
            "the reference image's latent frame prepended")
VARIANTS = {
    "Wan2.1-FLF2V-14B-720P": ("wan2.1-flf2v-14b", FLF),
    "Wan2.1-Fun-1.3B-InP": ("wan2.1-fun-inp", INP),
    "Wan2.1-Fun-14B-InP": ("wan2.1-fun-inp", INP),
    "Wan2.1-Fun-V1.1-1.3B-InP": ("wan2.1-fun-inp", INP),
    "Wan2.1-Fun-V1.1-14B-InP": ("wan2.1-fun-inp", INP),
    "Wan2.2-Fun-A14B-InP": ("wan2.2-fun-a14b-inp", INP + "; no CLIP encoder"),
    "Wan2.1-Fun-1.3B-Control": ("wan2.1-fun-control", CONTROL),
    "Wan2.1-Fun-14B-Control": ("wan2.1-fun-control", CONTROL),
    "Wan2.1-Fun-V1.1-1.3B-Control": ("wan2.1-fun-v1.1-control", CONTROL_REF),
    "Wan2.1-Fun-V1.1-14B-Control": ("wan2.1-fun-v1.1-control", CONTROL_REF),
    "Wan2.2-Fun-A14B-Control": ("wan2.2-fun-a14b-control", CONTROL_REF + "; no CLIP encoder"),
    "Wan2.1-Fun-V1.1-1.3B-Control-Camera": ("wan2.1-fun-v1.1-control-camera", CAMERA),
    "Wan2.1-Fun-V1.1-14B-Control-Camera": ("wan2.1-fun-v1.1-control-camera", CAMERA),
    "Wan2.2-Fun-A14B-Control-Camera": ("wan2.2-fun-a14b-control-camera", CAMERA + "; no CLIP encoder"),
    "Wan2.1-1.3b-speedcontrol-v1": ("wan2.1-speedcontrol", SPEED),
    "Wan2.2-Animate-14B": ("wan2.2-animate-14b", ANIMATE),
    "Wan2.2-Animate-2-14B": ("wan2.2-animate-2-14b", ANIMATE2),
    "Wan2.2-Animate-2-14B-Distilled": ("wan2.2-animate-2-14b", ANIMATE2 + "; the distilled DiT"),
    "krea-realtime-video": ("krea-realtime-video", "text-to-video; Krea Realtime 14B, Wan2.1-T2V-14B distilled by "
                            "Self-Forcing, trained as Wan2.1-T2V-14B"),
}
# twins whose conditioning columns the moving_shapes_control built-in writes (named by data_file_keys) rather than
# moving_shapes_conditioned: (built-in name, what it holds)
BUILTINS = {"wan2.2-animate-14b": ("moving_shapes_control", "built-in clips with animate_pose_video and "
                                   "animate_face_video (silhouette clips of the same frames; the face clip is loaded "
                                   "at 512x512)"),
            "wan2.2-animate-2-14b": ("moving_shapes_control", "built-in clips with animate2_reference_image (a still "
                                     "of the shape), animate2_reference_video (its silhouette clip) and "
                                     "animate2_prompt_ref"),
            "krea-realtime-video": ("moving_shapes", "built-in dataset when source=builtin (text-to-video clips)")}
# a recipe's validation script's sampler settings where they differ from Wan's defaults (30 steps, shift 5)
SAMPLE_SETTINGS = {"krea-realtime-video": {
    "num_inference_steps": (6, "sampler steps (DiffSynth's validate_{lora,full}/krea-realtime-video.py)"),
    "sigma_shift": (20.0, "sigma grid shift of the samples (its sigma_shift=20; cfg_scale 1 as base.yaml)")}}
# written by hand before this script (with their own comments): never rewritten, not even with --force
HAND_WRITTEN = {"wan2.1-flf2v-14b-lora", "wan2.1-fun-v1.1-1.3b-control-lora", "wan2.1-fun-v1.1-1.3b-control-camera-lora"}
EXPERTS = ("high-noise", "low-noise")  # a two-command Wan2.2-A14B recipe: command 1, command 2

COMMENTS = {
    "model.family": "model family (the extra inputs choose its variant)",
    "gradient.use_gradient_checkpointing": "--use_gradient_checkpointing (DiffSynth's Wan train.py forces it on)",
    "model.extra_inputs": "--extra_inputs (the variant's conditioning inputs)",
}
# DiffSynth's full/accelerate_config_14B.yaml: ZeRO-2 with the optimizer and parameters offloaded, 8 processes
ACCELERATE_14B = ("deepspeed_zero2_offload", "configs/accelerate/<name>.yaml (DiffSynth's full/accelerate_config_14B"
                  ".yaml: ZeRO-2, optimizer and parameters offloaded to the CPU)")


def preset_name(recipe_name: str, kind: str, command: int, commands: int) -> str:
    name = recipe_name.lower().replace("-720p", "")  # as presets/wan2.1-flf2v-14b-lora.yaml
    if commands == 2:
        name += f"-{EXPERTS[command]}"
    return f"{name}-{kind}"


def value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.1e}".replace("e-0", "e-") if v < 0.01 else repr(v)
    if isinstance(v, str):
        return f'"{v}"' if any(c in v for c in "*:, ") else v
    if isinstance(v, list):  # a YAML flow list, as the other presets write them
        return "[" + ", ".join(value(x) for x in v) + "]"
    return repr(v)


def line(key: str, v, comment: str) -> str:
    text = f"  {key}: {value(v)}"
    return f"{text:<32}# {comment}" if len(text) < 32 else f"{text} # {comment}"


def sections_text(sections: dict[str, dict[str, tuple]]) -> list[str]:
    out = []
    for section, values in sections.items():
        if not values:
            continue
        out += ["", f"{section}:"]
        out += [line(k, v, c) for k, (v, c) in values.items()]
    return out


def recipe_args(recipe: dict, command: int) -> list[str]:
    """The flags of ``command``; a split recipe's two commands as our cache and train stages run them (one preset)."""
    return recipe_argv(recipe) if is_split(recipe) else list(recipe["commands"][command]["args"])


def real_preset(recipe: dict, command: int, name: str, what: str) -> str:
    args = recipe_args(recipe, command)
    printed = config_from_args(args).to_dict()
    base = config_from_dict(preset_params(PRESETS / "base.yaml"), check=False).to_dict()
    sections: dict[str, dict[str, tuple]] = {}
    for s in TRAINING:
        for k, v in printed[s].items():
            if v != base[s][k]:
                sections.setdefault(s, {})[k] = (v, COMMENTS.get(f"{s}.{k}", f"--{k}"))
    sections["sample"] = {"prompts": (["a dog is running on the grass"], "sample prompts"),
                          "height": (printed["resolution"]["height"], "sample height"),
                          "width": (printed["resolution"]["width"], "sample width"),
                          "num_frames": (printed["resolution"]["num_frames"],
                                         "frames per sample (4k+1)" + ("; conditioned on the first row's inputs"
                                                                       if printed["model"]["extra_inputs"] else "")),
                          **SAMPLE_SETTINGS.get(recipe["name"], {})}
    sections["tracking"] = {"experiment": (name, "MLflow experiment")}
    if printed["lora"]["lora_base_model"]:
        sections["export"] = {"formats": (["diffusers", "comfyui"],
                                          "LoRA files written, each checked against the base model")}
    accelerate = recipe["commands"][command].get("accelerate_config")
    if accelerate:
        assert accelerate.endswith("full/accelerate_config_14B.yaml"), accelerate
        sections["accelerate"] = {"config": (ACCELERATE_14B[0], ACCELERATE_14B[1]),
                                  "num_processes": (8, "processes (GPUs) the train stage launches")}
    kind = "LoRA" if printed["lora"]["lora_base_model"] else "full fine-tune"
    n = len(recipe["commands"])
    expert = f" {EXPERTS[command]} expert" if n == 2 and not is_split(recipe) else ""
    part = f" (command {command + 1} of {n})," if n > 1 else ""
    if is_split(recipe):
        part = " (both commands: its sft:data_process is our cache stage, its sft:train our train stage),"
    launch = ("accelerate with DiffSynth's full/accelerate_config_14B.yaml" if accelerate
              else "single process, no accelerate yaml")
    folder = printed["dataset"]["dataset_base_path"].split("wanvideo/", 1)[-1]
    head = [f"# {recipe['name']}{expert} {kind} ({what})",
            f"# DiffSynth-Studio {recipe['path']}{part or ':'} {launch}",
            f"# Data: modelscope download --dataset DiffSynth-Studio/diffsynth_example_dataset --include "
            f"\"wanvideo/{folder}/*\" --local_dir ./data/diffsynth_example_dataset",
            f"# Use: diffsynth preset {name} && dvc repro   (needs the real weights and a GPU)",
            "extends: base.yaml"]
    return "\n".join(head + sections_text(sections)) + "\n"


def tiny_ids(entries: str, repo: str) -> str:
    """Each ``<real id>:<pattern>`` as ``diffsynth-tiny/<repo>:<pattern>`` (the twin is one folder)."""
    return ",".join(f"diffsynth-tiny/{repo}:{e.split(':', 1)[1]}" for e in entries.split(","))


def tiny_twin(recipe: dict, command: int, name: str, twin: str, what: str) -> str:
    args = recipe_args(recipe, command)
    printed = config_from_args(args).to_dict()
    lora = bool(printed["lora"]["lora_base_model"])
    repo = recipe["name"]
    keys = printed["dataset"]["data_file_keys"]
    dataset = {"data_file_keys": ("video", "--data_file_keys (DiffSynth default image,video; the built-in rows' clip)")
               if keys == "image,video" else (keys, "--data_file_keys"),
               "builtin_name": BUILTINS.get(twin, ("moving_shapes_conditioned", "built-in dataset when source=builtin "
                                                   "(clips + control clips, reference images, camera moves, motion "
                                                   "buckets)"))}
    sections = {
        "dataset": dataset,
        "resolution": {"height": (32, "--height"), "width": (32, "--width"),
                       "max_pixels": (1048576, "--max_pixels (unused: height and width are fixed)"),
                       "num_frames": (9, "--num_frames: frames from the start of each clip (4k+1)")},
        "model": {"tiny_preset": (twin, "tiny random model written by the models stage in the real layout"),
                  "model_id_with_origin_paths": (tiny_ids(printed["model"]["model_id_with_origin_paths"], repo),
                                                 "--model_id_with_origin_paths"),
                  "tokenizer_path": (f"diffsynth-tiny/{repo}:google/umt5-xxl/", "--tokenizer_path")},
        "train": {"learning_rate": (2.0e-3 if lora else 1.0e-3, "--learning_rate (the recipe's value is for real "
                                    "weights; the tiny twin learns faster)"),
                  "num_epochs": (1, "--num_epochs"),
                  "max_steps": (8, "stop after this many micro-steps (ours; null = all epochs)")},
        "lora": {"lora_rank": (8, "--lora_rank")} if lora else {},
        "gradient": {"use_gradient_checkpointing": (False, "--use_gradient_checkpointing (off: tiny clips)")},
        "validation": {"num_samples": (2, "dataset rows in the validation loss")},
        "sample": {"prompts": (["a red circle moving left to right on a white background"], "sample prompts"),
                   "height": (32, "sample height"), "width": (32, "sample width"),
                   "num_frames": (9, "frames per sample (4k+1)")},
        "tracking": {"experiment": ("diffsynth", "MLflow experiment")},
    }
    kind = "LoRA" if lora else "full fine-tune"
    expert = f" {EXPERTS[command]} expert" if len(recipe["commands"]) == 2 and not is_split(recipe) else ""
    head = [f"# TINY twin of presets/{name}.yaml: the same recipe on a random tiny {twin} model and the built-in "
            f"{BUILTINS.get(twin, ('moving_shapes_conditioned',))[0]} clips",
            "# Runs on a CPU in seconds (tests/test_every_preset.py); a test/demo device, its results mean nothing.",
            f"# Real recipe: {recipe['name']}{expert} {kind} ({what})",
            f"# Use: diffsynth preset tiny/{name} && dvc repro",
            f"extends: [../{name}.yaml, cpu.yaml]"]
    return "\n".join(head + sections_text(sections)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite presets that exist")
    args = parser.parse_args(argv)
    written = 0
    for recipe in table()["recipes"]:
        if recipe["family"] != "wanvideo" or recipe["kind"] not in ("full", "lora") or recipe["name"] not in VARIANTS:
            continue
        twin, what = VARIANTS[recipe["name"]]
        commands = [1] if is_split(recipe) else range(len(recipe["commands"]))  # split: one preset, train's command
        for command in commands:
            name = preset_name(recipe["name"], recipe["kind"], command, 1 if is_split(recipe) else len(commands))
            real, tiny = PRESETS / f"{name}.yaml", PRESETS / "tiny" / f"{name}.yaml"
            if name in HAND_WRITTEN or (real.exists() and not args.force):
                continue
            real.write_text(real_preset(recipe, command, name, what))
            tiny.write_text(tiny_twin(recipe, command, name, twin, what))
            written += 1
            print(f"wrote presets/{name}.yaml and presets/tiny/{name}.yaml")
    print(f"{written} presets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
