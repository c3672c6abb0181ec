"""Wan VACE: the DiT file splits into pipe.dit and pipe.vace (DiffSynth's names), the forward equals diffusers'
WanVACETransformer3DModel, the conditioning has DiffSynth's layout, a LoRA on pipe.vace trains and saves DiffSynth's
names, the data check knows vace_video, and Wan2.2-Animate-2 is refused by name (Wan2.2-Animate-14B:
test_family_wan_animate.py)."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffsynth.config import config_from_dict
from diffsynth.families import spec_for
from diffsynth.families.wan import vace_model
from diffsynth.families.wan.vace import WanVace
from diffsynth.models.tiny import write_tiny_model
from diffsynth.presets import preset_params
from diffsynth.training.loop import run_training
from helpers import REPO

REPO_ID = "diffsynth-tiny/Wan2.1-VACE-1.3B"
ENTRIES = ",".join(f"{REPO_ID}:{f}" for f in ("diffusion_pytorch_model*.safetensors",
                                               "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth"))
KEYS = "video,vace_video,vace_reference_image"


@pytest.fixture(scope="module")
def vace_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("vace_models")
    write_tiny_model("wan2.1-vace-1.3b", base / REPO_ID)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(base))
        mp.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
        yield base


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from diffsynth.data.sample_video import build_moving_shapes_control_dataset
    return build_moving_shapes_control_dataset(tmp_path_factory.mktemp("data") / "clips",
                                               ("vace_video", "vace_reference_image"))


def config(**model):
    return config_from_dict({"model": {"family": "wan", "model_id_with_origin_paths": ENTRIES,
                                       "tokenizer_path": f"{REPO_ID}:google/umt5-xxl/",
                                       "extra_inputs": "vace_video,vace_reference_image", **model},
                             "dataset": {"data_file_keys": KEYS}, "lora": {"lora_base_model": "vace"}})


def item(reference=True, vace_video=True):
    frames = [Image.new("RGB", (32, 32), (200 - 20 * i, 40 + 10 * i, 90)) for i in range(9)]
    out = {"video": frames, "prompt": "a red circle moving left to right"}
    if vace_video:
        out["vace_video"] = [Image.new("RGB", (32, 32), (10 * i, 0, 0)) for i in range(9)]
    if reference:
        out["vace_reference_image"] = Image.new("RGB", (32, 32), (0, 200, 0))
    return out


@pytest.fixture(scope="module")
def pipe(vace_base):
    return WanVace.load_pipeline(config(), torch.float32)


def test_vace_dit_splits_and_runs_as_diffusers_vace_model(pipe):
    import diffusers
    assert type(pipe.dit).__name__ == "WanTransformer3DModel" and isinstance(pipe.vace, vace_model.WanVaceModel)
    assert pipe.vace.vace_layers == (0, 1)
    names = set(pipe.vace.state_dict())  # DiffSynth's VaceWanModel names
    assert {"vace_patch_embedding.weight", "vace_blocks.0.before_proj.weight", "vace_blocks.1.after_proj.weight",
            "vace_blocks.0.self_attn.q.weight", "vace_blocks.1.ffn.2.bias", "vace_blocks.0.modulation",
            "vace_blocks.0.norm3.weight"} <= names
    assert "vace_blocks.1.before_proj.weight" not in names
    # the same weights in diffusers' own VACE model: the same prediction
    full = diffusers.WanVACETransformer3DModel.from_config(
        {**dict(pipe.dit.config), "vace_layers": [0, 1], "vace_in_channels": 96}).eval()
    state = {k: v for k, v in pipe.dit.state_dict().items()}
    from diffsynth.families.wan.convert import wan_dit_to_diffusers
    state.update(wan_dit_to_diffusers(pipe.vace.state_dict()))
    full.load_state_dict(state)
    gen = torch.Generator().manual_seed(0)
    x, ctx, control = torch.randn(2, 16, 3, 4, 4, generator=gen), torch.randn(2, 5, 32, generator=gen), \
        torch.randn(2, 96, 3, 4, 4, generator=gen)
    t = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        ours = pipe.predict(x, t, {"prompt_emb": ctx, "vace_context": control})
        theirs = full(x, t, ctx, control_hidden_states=control, return_dict=False)[0]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_vace_conditioning_layout(pipe):
    with_ref = pipe.encode(item())
    assert with_ref["latents"].shape == (1, 16, 4, 4, 4)  # the reference frame, then 3 video latent frames
    assert with_ref["vace_context"].shape == (1, 96, 4, 4, 4)  # 2 x 16 VAE channels + 64 mask channels
    mask = with_ref["vace_context"][:, 32:]
    assert torch.all(mask[:, :, 0] == 0) and torch.all(mask[:, :, 1:] == 1)  # reference frame unmasked, video all 1
    assert torch.all(with_ref["vace_context"][:, 16:32, 0] == 0)  # the reference has zeros as its "reactive" half
    ref = pipe.encode_video(pipe_frames(item()["vace_reference_image"]))
    assert torch.allclose(with_ref["latents"][:, :, :1], ref) and torch.allclose(with_ref["vace_context"][:, :16, :1], ref)
    plain = pipe.encode(item(reference=False))
    assert plain["latents"].shape == (1, 16, 3, 4, 4) and plain["vace_context"].shape == (1, 96, 3, 4, 4)
    assert torch.allclose(plain["latents"], with_ref["latents"][:, :, 1:])
    batch = pipe.collate([with_ref, pipe.encode(item())])  # one shape bucket: a batch of two
    assert batch["vace_context"].shape == (2, 96, 4, 4, 4)
    with torch.no_grad():
        assert pipe.predict(batch["latents"], torch.tensor([200.0, 700.0]), batch).shape == (2, 16, 4, 4, 4)
    no_video = pipe.encode(item(reference=False, vace_video=False))  # DiffSynth: a zero control video
    zeros = pipe.encode_video(torch.zeros(1, 3, 9, 32, 32))
    assert torch.allclose(no_video["vace_context"][:, 16:32], zeros)


def pipe_frames(image):
    from diffsynth.families.wan.pipeline import frames_to_tensor
    return frames_to_tensor([image])


@pytest.mark.slow  # a short training run (tests/test_every_preset.py runs the twins through every stage)
def test_vace_lora_trains_with_diffsynth_checkpoint_names(vace_base, clips, tmp_path):
    data = preset_params(REPO / "presets" / "tiny" / "wan2.1-vace-1.3b-lora.yaml")
    data["dataset"].update(source="local", dataset_base_path=str(clips.parent), dataset_metadata_path=str(clips))
    data["model"].update(model_id_with_origin_paths=ENTRIES, tokenizer_path=f"{REPO_ID}:google/umt5-xxl/")
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"].update(out_dir=str(tmp_path / "samples"), num_inference_steps=1)
    data["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["train"]["max_steps"] = 2
    data["validation"]["num_samples"] = 1
    data["cache"]["enabled"] = False
    cfg = config_from_dict(data)
    assert spec_for(cfg) is WanVace
    result = run_training(cfg)
    assert result.steps == 2 and all(math.isfinite(loss) for _, loss in result.loss_history)
    state = load_file(result.checkpoints[-1])
    modules = {k.rsplit(".lora_", 1)[0] for k in state}
    # --remove_prefix_in_ckpt pipe.vace.: DiffSynth's names for --lora_base_model vace, default targets, both blocks
    inside = {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
              "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"}
    assert modules == {f"vace_blocks.{n}.{m}" for n in (0, 1) for m in inside}
    assert all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in state)


def test_data_check_knows_vace_video(clips, tmp_path):
    import csv
    import shutil

    from diffsynth.data.dataset import ImageRules
    from diffsynth.data.validate import validate_dataset
    folder = tmp_path / "data"
    shutil.copytree(clips.parent, folder)
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    rows[1]["vace_video"] = "missing.mp4"                 # a bad row: named before training
    rows[3]["vace_video"] = rows[0]["vace_video"]         # 17-frame target, 9-frame control: a warning
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rules = WanVace.data_rules(config())
    assert rules.video_keys == ("video", "vace_video") and rules.frame_matched_keys == ("vace_video",)
    report = validate_dataset(folder, folder / "metadata.csv", KEYS, ImageRules(None, 32, 32, 16, 16, 17, 4, 1),
                              "vace_video,vace_reference_image", video_keys=rules.video_keys,
                              frame_matched_keys=rules.frame_matched_keys)
    assert [(p["row"], p["column"]) for p in report.problems] == [(1, "vace_video")]
    assert report.valid_rows == len(rows) - 1
    short = [(w["row"], w["column"]) for w in report.warnings if "frames" in w["reason"]]
    assert short == [(3, "vace_video")]


def test_plan_counts_the_vace_branch():
    from diffsynth.plan import model_entries
    from diffsynth.presets import load_preset
    cfg = load_preset(REPO / "presets" / "wan2.1-vace-1.3b-lora.yaml", REPO / "presets")
    entries = {e.component: e for e in model_entries(cfg)}
    assert isinstance(entries["vace"].module, vace_model.WanVaceModel)
    assert len(entries["vace"].module.vace_blocks) == 15 and entries["dit"].module.config.num_layers == 30
    from diffsynth.plan import lora_modules
    assert len(lora_modules(cfg, entries)) == 15 * 10
