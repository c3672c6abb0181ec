"""A flag that only another DiffSynth family's train.py defines is refused in one line naming the flag and that
family, through `diffsynth train` and `diffsynth params --from-args`, never argparse's `unrecognized arguments`."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from diffsynth import cli
from diffsynth.command_line import UNSUPPORTED_FLAGS, build_arg_parser
from diffsynth.upstream_flags import UPSTREAM_FAMILY_FLAGS, all_upstream_flags, families_of
from helpers import REPO

# DiffSynth declares these store_true: written bare on its command lines
BARE = {"first_frame_as_condition", "silent_on_missing_audio", "enable_npu_patch"}
COMMANDS = {"train": ["train"], "params": ["params", "--from-args"]}

# examples/flux2/model_training/special/dmd2/FLUX.2-klein-base-4B-DMD2.sh, as DiffSynth-Studio ships it
FLUX2_DMD2_RECIPE = """
  --dataset_base_path data/diffsynth_example_dataset/flux2/FLUX.2-klein-base-4B \
  --dataset_metadata_path data/diffsynth_example_dataset/flux2/FLUX.2-klein-base-4B/metadata.csv \
  --height 512 \
  --width 512 \
  --dataset_repeat 100 \
  --model_id_with_origin_paths "black-forest-labs/FLUX.2-klein-4B:text_encoder/*.safetensors,black-forest-labs/FLUX.2-klein-base-4B:transformer/*.safetensors,black-forest-labs/FLUX.2-klein-4B:vae/diffusion_pytorch_model.safetensors" \
  --tokenizer_path "black-forest-labs/FLUX.2-klein-4B:tokenizer/" \
  --learning_rate 1e-5 \
  --dmd2_fake_score_learning_rate 1e-5 \
  --dmd2_discriminator_learning_rate 1e-5 \
  --num_epochs 10 \
  --save_steps 1000 \
  --remove_prefix_in_ckpt "pipe.dit." \
  --output_path "./models/train/FLUX.2-klein-base-4B_dmd2" \
  --trainable_models "dit" \
  --dmd2_student_sample_steps 4 \
  --dmd2_student_sample_type sde \
  --dmd2_student_update_freq 5 \
  --dmd2_gan_loss_weight 0.03 \
  --dmd2_feature_indices 12 \
  --embedded_guidance 4 \
  --dmd2_teacher_cfg_scale 4 \
  --use_gradient_checkpointing"""


def the_one_line(text: str) -> str:
    """The one error line (library warnings at import may precede it)."""
    lines = [line for line in text.splitlines() if line.startswith("error") or "usage:" in line]
    assert len(lines) == 1, text
    assert "unrecognized arguments" not in text and "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", all_upstream_flags())
def test_each_upstream_flag_is_one_line_naming_its_family(flag, command, capsys):
    argv = [*COMMANDS[command], "--dataset_base_path", "data", "--lora_base_model", "dit", f"--{flag}",
            *([] if flag in BARE else ["1"])]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = the_one_line(captured.err)
    assert captured.err.strip() == line
    assert line.startswith(f"error: --{flag} belongs to DiffSynth's ")
    for family in families_of(flag):
        assert line.count(family) == 2, line  # whose trainer it is, and that we do not train it yet


def test_the_table_holds_only_flags_we_do_not_define():
    ours = {action.option_strings[0][2:] for action in build_arg_parser()._actions if action.option_strings}
    table = all_upstream_flags()
    assert table and not set(table) & ours and not set(table) & set(UNSUPPORTED_FLAGS)
    assert sum(len(flags) for flags in UPSTREAM_FAMILY_FLAGS.values()) >= len(table)
    assert families_of("frame_rate") == ["LTX-2", "MOVA"] and families_of("learning_rate") == []


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_diffsynth_dmd2_recipe_as_written_names_its_trainer(command, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "DIFFSYNTH_DEBUG"}, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "diffsynth.cli", *COMMANDS[command],
                           *shlex.split(FLUX2_DMD2_RECIPE.replace("\\\n", " "))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = the_one_line(proc.stdout + proc.stderr)
    # FLUX.2 is ours: its model id passes, and the DMD2 trainer's own flag is refused by name, saying what it is
    assert line.startswith("error: --dmd2_fake_score_learning_rate") and "FLUX.2 DMD2 trainer" in line
    assert not any(tmp_path.iterdir())  # refused before anything is written
