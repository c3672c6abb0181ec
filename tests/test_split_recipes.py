"""DiffSynth's split-training recipes run as its example scripts write them: ``--task sft:data_process`` with the
model entries the script gives it, then ``--task sft:train`` from that cache with its own entries.

The scripts are pasted from DiffSynth-Studio (fed7b18) with their flags unchanged. The tiny twins are written at
the real model ids (DIFFSYNTH_MODEL_BASE_PATH, no download) and the datasets at the scripts' relative paths, so
only three things differ, all for a CPU: the video size (--height/--width 480x832 -> 32x32), and
``--max_steps`` (ours) cuts the 5 epochs to one or two steps. DiffSynth ships no split recipe for FLUX.1 (only
FLUX.2's, a family we do not have); its FLUX.1-dev LoRA recipe is split as the Qwen-Image one is.
"""
from __future__ import annotations

import math
import shlex
import shutil

import pytest
from safetensors.torch import load_file

from diffsynth.command_line import config_from_args
from diffsynth.errors import ConfigError
from diffsynth.models.tiny import write_tiny_model
from diffsynth.training.loop import run_training

# examples/qwen_image/model_training/special/split_training/Qwen-Image-LoRA.sh
QWEN_IMAGE = r'''
accelerate launch examples/qwen_image/model_training/train.py \
  --dataset_base_path data/diffsynth_example_dataset/qwen_image/Qwen-Image \
  --dataset_metadata_path data/diffsynth_example_dataset/qwen_image/Qwen-Image/metadata.csv \
  --max_pixels 1048576 \
  --dataset_repeat 1 \
  --model_id_with_origin_paths "Qwen/Qwen-Image:text_encoder/model*.safetensors,Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors" \
  --learning_rate 1e-4 \
  --num_epochs 5 \
  --remove_prefix_in_ckpt "pipe.dit." \
  --output_path "./models/train/Qwen-Image-LoRA-splited-cache" \
  --lora_base_model "dit" \
  --lora_target_modules "to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,img_mlp.net.2,img_mod.1,txt_mlp.net.2,txt_mod.1" \
  --lora_rank 32 \
  --use_gradient_checkpointing \
  --dataset_num_workers 8 \
  --find_unused_parameters \
  --task "sft:data_process"

accelerate launch examples/qwen_image/model_training/train.py \
  --dataset_base_path "./models/train/Qwen-Image-LoRA-splited-cache" \
  --max_pixels 1048576 \
  --dataset_repeat 50 \
  --model_id_with_origin_paths "Qwen/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors" \
  --learning_rate 1e-4 \
  --num_epochs 5 \
  --remove_prefix_in_ckpt "pipe.dit." \
  --output_path "./models/train/Qwen-Image-LoRA-splited" \
  --lora_base_model "dit" \
  --lora_target_modules "to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,img_mlp.net.2,img_mod.1,txt_mlp.net.2,txt_mod.1" \
  --lora_rank 32 \
  --use_gradient_checkpointing \
  --dataset_num_workers 8 \
  --find_unused_parameters \
  --task "sft:train"
'''

# examples/wanvideo/model_training/special/split_training/Wan2.1-I2V-14B-480P.sh
WAN_I2V = r'''
accelerate launch examples/wanvideo/model_training/train.py \
  --dataset_base_path data/diffsynth_example_dataset/wanvideo/Wan2.1-I2V-14B-480P \
  --dataset_metadata_path data/diffsynth_example_dataset/wanvideo/Wan2.1-I2V-14B-480P/metadata.csv \
  --height 480 \
  --width 832 \
  --dataset_repeat 1 \
  --model_id_with_origin_paths "Wan-AI/Wan2.1-I2V-14B-480P:diffusion_pytorch_model*.safetensors,Wan-AI/Wan2.1-I2V-14B-480P:models_t5_umt5-xxl-enc-bf16.pth,Wan-AI/Wan2.1-I2V-14B-480P:Wan2.1_VAE.pth,Wan-AI/Wan2.1-I2V-14B-480P:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth" \
  --learning_rate 1e-4 \
  --num_epochs 5 \
  --remove_prefix_in_ckpt "pipe.dit." \
  --output_path "./models/train/Wan2.1-I2V-14B-480P_lora_split_cache" \
  --lora_base_model "dit" \
  --lora_target_modules "q,k,v,o,ffn.0,ffn.2" \
  --lora_rank 32 \
  --extra_inputs "input_image" \
  --task "sft:data_process" \
  --offload_models "Wan-AI/Wan2.1-I2V-14B-480P:diffusion_pytorch_model*.safetensors"

accelerate launch examples/wanvideo/model_training/train.py \
  --dataset_base_path "./models/train/Wan2.1-I2V-14B-480P_lora_split_cache" \
  --height 480 \
  --width 832 \
  --dataset_repeat 100 \
  --model_id_with_origin_paths "Wan-AI/Wan2.1-I2V-14B-480P:diffusion_pytorch_model*.safetensors,Wan-AI/Wan2.1-I2V-14B-480P:models_t5_umt5-xxl-enc-bf16.pth,Wan-AI/Wan2.1-I2V-14B-480P:Wan2.1_VAE.pth,Wan-AI/Wan2.1-I2V-14B-480P:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth" \
  --learning_rate 1e-4 \
  --num_epochs 5 \
  --remove_prefix_in_ckpt "pipe.dit." \
  --output_path "./models/train/Wan2.1-I2V-14B-480P_lora_split" \
  --lora_base_model "dit" \
  --lora_target_modules "q,k,v,o,ffn.0,ffn.2" \
  --lora_rank 32 \
  --extra_inputs "input_image" \
  --task "sft:train" \
  --offload_models "Wan-AI/Wan2.1-I2V-14B-480P:models_t5_umt5-xxl-enc-bf16.pth,Wan-AI/Wan2.1-I2V-14B-480P:Wan2.1_VAE.pth,Wan-AI/Wan2.1-I2V-14B-480P:models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
'''

# examples/flux/model_training/lora/FLUX.1-dev.sh split as the Qwen-Image recipe is (DiffSynth ships no FLUX.1
# split recipe): step 1 the CLIP, T5 and VAE entries, step 2 the DiT entry; every other flag as written
FLUX_COMMON = r'''
  --max_pixels 1048576 \
  --learning_rate 1e-4 \
  --num_epochs 5 \
  --remove_prefix_in_ckpt "pipe.dit." \
  --lora_base_model "dit" \
  --lora_target_modules "a_to_qkv,b_to_qkv,ff_a.0,ff_a.2,ff_b.0,ff_b.2,a_to_out,b_to_out,proj_out,norm.linear,norm1_a.linear,norm1_b.linear,to_qkv_mlp" \
  --lora_rank 32 \
  --align_to_opensource_format \
  --use_gradient_checkpointing \
'''
FLUX = r'''
accelerate launch examples/flux/model_training/train.py \
  --dataset_base_path data/diffsynth_example_dataset/flux/FLUX.1-dev \
  --dataset_metadata_path data/diffsynth_example_dataset/flux/FLUX.1-dev/metadata.csv \
  --dataset_repeat 1 \
  --model_id_with_origin_paths "black-forest-labs/FLUX.1-dev:text_encoder/model.safetensors,black-forest-labs/FLUX.1-dev:text_encoder_2/*.safetensors,black-forest-labs/FLUX.1-dev:ae.safetensors" \
  --output_path "./models/train/FLUX.1-dev_lora_split_cache" \
''' + FLUX_COMMON + r'''  --task "sft:data_process"

accelerate launch examples/flux/model_training/train.py \
  --dataset_base_path "./models/train/FLUX.1-dev_lora_split_cache" \
  --dataset_repeat 50 \
  --model_id_with_origin_paths "black-forest-labs/FLUX.1-dev:flux1-dev.safetensors" \
  --output_path "./models/train/FLUX.1-dev_lora_split" \
''' + FLUX_COMMON + r'''  --task "sft:train"
'''

# family -> (script, tiny twin, its real repository, built-in dataset, files of the twin that DiffSynth fetches from
# another repository: (repository, path or glob in the twin)). Wan: the default tokenizer is Wan2.1-T2V-1.3B's, and
# the pickled .pth entries are fetched as safetensors from DiffSynth's converted repository.
RECIPES = {
    "qwen_image": (QWEN_IMAGE, "qwen-image", "Qwen/Qwen-Image", "shapes", []),
    "flux": (FLUX, "flux.1-dev", "black-forest-labs/FLUX.1-dev", "shapes", []),
    "wan": (WAN_I2V, "wan2.1-i2v-14b", "Wan-AI/Wan2.1-I2V-14B-480P", "moving_shapes",
            [("Wan-AI/Wan2.1-T2V-1.3B", "google/umt5-xxl"),
             ("DiffSynth-Studio/Wan-Series-Converted-Safetensors", "models_*.safetensors"),
             ("DiffSynth-Studio/Wan-Series-Converted-Safetensors", "Wan2.1_VAE.safetensors")]),
}
# how the DiT's weight files are recognised among the files read
DIT_FILE = {"qwen_image": "/transformer/", "flux": "/flux1-dev.safetensors",
            "wan": "Wan2.1-I2V-14B-480P/diffusion_pytorch_model"}
ROWS = 2
CPU_SIZES = {"--height": "32", "--width": "32"}  # the only flag values changed: 480x832 video is not for a CPU


def recipe_steps(script: str) -> list[list[str]]:
    """The flags of each ``accelerate launch .../train.py`` command of a shell script."""
    steps = []
    for command in script.split("accelerate launch")[1:]:
        argv = shlex.split(command.replace("\\\n", " "))[1:]  # continuation lines; drop train.py
        steps.append([CPU_SIZES.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)])
    return steps


@pytest.fixture()
def recipe_world(tmp_path_factory, tmp_path, monkeypatch):
    """Write a family's tiny twin at its real model id and its dataset at the script's path; run in tmp_path."""
    from diffsynth.data.sample_dataset import build_builtin

    base = tmp_path_factory.mktemp("models")
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(base))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
    monkeypatch.chdir(tmp_path)

    def make(family: str) -> list[list[str]]:
        script, twin, repo, dataset, elsewhere = RECIPES[family]
        write_tiny_model(twin, base / repo)
        for other, pattern in elsewhere:
            for path in (base / repo).glob(pattern):
                target = base / other / path.relative_to(base / repo)
                target.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
        steps = recipe_steps(script)
        data = steps[0][steps[0].index("--dataset_base_path") + 1]
        metadata = build_builtin(dataset, tmp_path / data)
        rows = metadata.read_text().splitlines()
        metadata.write_text("\n".join(rows[:1 + ROWS]) + "\n")  # tiny data: a header and ROWS rows
        return steps
    return make


def run_step(argv: list[str], tmp_path, **extra):
    # ours, not DiffSynth's (it always loads bfloat16): float32 is several times faster on a CPU
    extra = {"torch_dtype": "float32", **extra}
    config = config_from_args(argv + [a for k, v in extra.items() for a in (f"--{k}", str(v))])
    config.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return config, run_training(config)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(RECIPES))
def test_diffsynth_split_recipe_as_written(family, recipe_world, tmp_path, capsys, monkeypatch):
    from diffsynth.models import components

    step1, step2 = recipe_world(family)
    # step 1 encodes with what its model flags name; the DiT's weights are never read
    read, original = [], components.load_state_dict
    monkeypatch.setattr(components, "load_state_dict",
                        lambda files, dtype=None: read.append([str(f) for f in files]) or original(files, dtype))
    config, _ = run_step(step1, tmp_path)
    cache_dir = tmp_path / config.output.output_path
    assert (cache_dir / "index.json").exists()
    is_dit = DIT_FILE[family]
    assert read and not any(is_dit in f for fs in read for f in fs)
    read.clear()
    # step 2 trains from that cache with the DiT; the encoders' (and an absent or offloaded VAE's) files stay shut
    config, result = run_step(step2, tmp_path, max_steps=2)
    out = capsys.readouterr().out
    assert read and all(is_dit in f for fs in read for f in fs)
    assert result.steps == 2 and all(math.isfinite(v) for _, v in result.loss_history)
    assert result.val_history and all(math.isfinite(m["val_loss"]) for _, m in result.val_history)
    checkpoint = load_file(result.checkpoints[-1])
    assert checkpoint and all("lora" in k for k in checkpoint)  # the DiT's LoRA (FLUX: BFL names with alpha)
    assert out.count("the validation loss is still logged") == 1  # no samples: said once, not at each save point
    if family == "wan":  # each --offload_models entry is one the step never holds: one line each (DiT; T5, CLIP; VAE)
        assert out.count("nothing to offload") == 3 and "is not loaded (no sample images)" in out


def test_offloading_in_the_encoding_step_is_said_and_an_unknown_entry_refused(recipe_world, tmp_path, capsys):
    step1, _ = recipe_world("qwen_image")
    vae = "Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors"
    run_step(step1, tmp_path, offload_models=vae)  # the encoding step encodes with the VAE: it stays resident
    assert "the encoding step keeps the vae resident" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"offload_models.*not model entries"):
        run_step(step1, tmp_path, offload_models="Qwen/Qwen-Image:nothing.safetensors")


def test_a_split_step_still_names_what_it_lacks(recipe_world, tmp_path):
    step1, step2 = recipe_world("qwen_image")
    models = step1.index("--model_id_with_origin_paths") + 1
    step1[models] = "Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors"  # no text encoder
    with pytest.raises(ConfigError, match=r"encoding step .* needs vae, text_encoder; missing: \['text_encoder'\]"):
        run_step(step1, tmp_path)
    models = step2.index("--model_id_with_origin_paths") + 1
    step2[models] = "Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors"  # no DiT
    with pytest.raises(ConfigError, match=r"from the encoder cache needs dit; missing: \['dit'\]"):
        run_step(step2, tmp_path)


def test_wan_encoding_reads_the_dit_config_so_its_step_one_names_the_dit(recipe_world, tmp_path):
    """Wan's inputs depend on the DiT (in_channels: the image-to-video ``y``; image_dim: CLIP features), as in
    DiffSynth, whose recipe names the DiT in step 1 and offloads it; without it the step says why."""
    step1, _ = recipe_world("wan")
    models = step1.index("--model_id_with_origin_paths") + 1
    step1[models] = ",".join(e for e in step1[models].split(",") if "diffusion_pytorch_model" not in e)
    offload = step1.index("--offload_models")
    del step1[offload:offload + 2]
    with pytest.raises(ConfigError, match=r"missing: \['dit'\] \(the DiT's config decides the encoded inputs"):
        run_step(step1, tmp_path)
