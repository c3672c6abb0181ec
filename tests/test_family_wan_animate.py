"""Wan2.2-Animate-14B: the adapter in DiffSynth's names and shapes, the DiT file split into pipe.dit and
pipe.animate_adapter, the variant chosen by animate_pose_video (its neighbours refused by name), DiffSynth's
conditioning (pose clip cut to len(video) - 4 and VAE-encoded, 512x512 face clip as pixels), the forward's animate
branch, gradients as DiffSynth's, the data check naming bad rows, and (slow) the tiny twin training the adapter in
full with DiffSynth's checkpoint names, sampling and exporting. Parity with DiffSynth: tests/parity (case animate)."""
from __future__ import annotations

import copy
import csv
import math
import shutil

import pytest
import torch
from accelerate import init_empty_weights
from PIL import Image
from safetensors.torch import load_file

from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.families import spec_for
from diffsynth.families.wan import animate_model
from diffsynth.families.wan.animate import WanAnimate
from diffsynth.families.wan.pipeline import Wan, frames_to_tensor
from diffsynth.models.tiny import write_tiny_model
from diffsynth.presets import preset_params
from helpers import REPO

REPO_ID = "diffsynth-tiny/Wan2.2-Animate-14B"
ENTRIES = ",".join(f"{REPO_ID}:{f}" for f in ("diffusion_pytorch_model*.safetensors", "models_t5_umt5-xxl-enc-bf16.pth",
                                               "Wan2.1_VAE.pth",
                                               "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"))
INPUTS = "input_image,animate_pose_video,animate_face_video"
KEYS = "video,animate_pose_video,animate_face_video"


@pytest.fixture(scope="module")
def animate_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("animate_models")
    write_tiny_model("wan2.2-animate-14b", base / REPO_ID)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(base))
        mp.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
        yield base


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from diffsynth.data.sample_video import build_moving_shapes_control_dataset
    return build_moving_shapes_control_dataset(tmp_path_factory.mktemp("data") / "clips",
                                               ("animate_pose_video", "animate_face_video"))


def config(extra_inputs=INPUTS, **lora):
    return config_from_dict({"model": {"family": "wan", "model_id_with_origin_paths": ENTRIES,
                                       "tokenizer_path": f"{REPO_ID}:google/umt5-xxl/", "extra_inputs": extra_inputs},
                             "dataset": {"data_file_keys": KEYS},
                             "lora": {"lora_base_model": "dit", **lora}})


def item(frames=9, pose=None, face=None):
    video = [Image.new("RGB", (32, 32), (200 - 20 * i, 40 + 10 * i, 90)) for i in range(frames)]
    return {"video": video, "prompt": "a red circle dancing",
            "animate_pose_video": [Image.new("RGB", (32, 32), (25 * i, 0, 0)) for i in range(pose or frames)],
            "animate_face_video": [Image.new("RGB", (512, 512), (20 * i, 90, 30)) for i in range(face or frames)]}


@pytest.fixture(scope="module")
def pipe(animate_base):
    return WanAnimate.load_pipeline(config(), torch.float32)


# ------------------------------------------------------------------------------------------------ the adapter
def test_real_adapter_has_diffsynths_names_and_shapes():
    """DiffSynth's WanAnimateAdapter (= ComfyUI's AnimateWanModel parts): 138 tensors at 14B, these shapes."""
    with init_empty_weights():
        adapter = animate_model.WanAnimateAdapter()
    state = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert len(state) == 138
    assert sum(k.startswith("face_adapter.fuser_blocks.") for k in state) == 8 * 8
    assert sum(k.startswith("motion_encoder.") for k in state) == 63
    expected = {
        "pose_patch_embedding.weight": (5120, 16, 1, 2, 2), "pose_patch_embedding.bias": (5120,),
        "motion_encoder.enc.net_app.convs.0.0.weight": (32, 3, 1, 1),
        "motion_encoder.enc.net_app.convs.0.1.bias": (1, 32, 1, 1),
        "motion_encoder.enc.net_app.convs.1.conv1.0.weight": (32, 32, 3, 3),
        "motion_encoder.enc.net_app.convs.1.conv2.0.kernel": (4, 4),
        "motion_encoder.enc.net_app.convs.1.conv2.1.weight": (64, 32, 3, 3),
        "motion_encoder.enc.net_app.convs.1.conv2.2.bias": (1, 64, 1, 1),
        "motion_encoder.enc.net_app.convs.7.skip.1.weight": (512, 512, 1, 1),
        "motion_encoder.enc.net_app.convs.8.weight": (512, 512, 4, 4),
        "motion_encoder.enc.fc.4.weight": (20, 512), "motion_encoder.enc.fc.4.bias": (20,),
        "motion_encoder.dec.direction.weight": (512, 20),
        "face_encoder.conv1_local.conv.weight": (4096, 512, 3), "face_encoder.conv2.conv.weight": (1024, 1024, 3),
        "face_encoder.conv3.conv.bias": (1024,), "face_encoder.out_proj.weight": (5120, 1024),
        "face_encoder.padding_tokens": (1, 1, 1, 5120),
        "face_adapter.fuser_blocks.7.linear1_kv.weight": (10240, 5120),
        "face_adapter.fuser_blocks.7.linear1_q.bias": (5120,), "face_adapter.fuser_blocks.0.linear2.weight": (5120, 5120),
        "face_adapter.fuser_blocks.0.q_norm.weight": (128,), "face_adapter.fuser_blocks.0.k_norm.weight": (128,),
    }
    assert {k: state.get(k) for k in expected} == expected
    assert adapter.face_size == 512
    assert animate_model.adapter_config(state) == adapter.config  # the config comes back from the shapes alone


def test_face_blocks_follow_every_fifth_dit_block():
    adapter = animate_model.WanAnimateAdapter(dim=8, heads=2, face_blocks=2, motion_channels=[1, 1, 1],
                                              style_dim=4, motion_dim=2, face_heads=1, face_hidden=4)
    x, motion = torch.randn(1, 6, 8), torch.randn(1, 2, 2, 8)
    for block in range(12):
        changed = not torch.equal(adapter.after_block(block, x, motion), x)
        assert changed == (block in (0, 5)), block  # block 10 would need a third face block: none, as at 14B


# ------------------------------------------------------------------------------------------------ loading
def test_dit_file_splits_into_dit_and_adapter(pipe, animate_base):
    from diffsynth.models.safetensors_io import read_tensors
    assert type(pipe.dit).__name__ == "WanTransformer3DModel"
    assert not any(hasattr(pipe.dit, part) for part in animate_model.PARTS)
    assert isinstance(pipe.animate_adapter, animate_model.WanAnimateAdapter)
    assert pipe.require_vae_embedding and pipe.require_clip_embedding  # the image-to-video DiT (36 channels, CLIP)
    released = read_tensors(animate_base / REPO_ID / "diffusion_pytorch_model.safetensors", "the tiny file")
    adapter_keys = {k for k in released if animate_model.ADAPTER_KEY.match(k)}
    own = pipe.animate_adapter.state_dict()
    assert set(own) == adapter_keys and len(adapter_keys) == 63 + 8 + 9 + 2
    assert all(torch.equal(own[k], released[k]) for k in adapter_keys)
    assert not any(k.startswith(animate_model.PARTS) for k in pipe.dit.state_dict())


def test_variant_is_chosen_by_the_pose_clip_and_neighbours_are_refused_by_name(animate_base):
    assert spec_for(config()) is WanAnimate
    with pytest.raises(ConfigError, match="animate_face_video trains Wan2.2-Animate-14B together with the pose clip"):
        config("input_image,animate_face_video")
    with pytest.raises(ConfigError, match="replacement mode .*animate_inpaint_video"):
        config(INPUTS + ",animate_inpaint_video,animate_mask_video")
    with pytest.raises(ConfigError, match="needs model.extra_inputs to include animate_face_video"):
        config("input_image,animate_pose_video")
    with pytest.raises(ConfigError, match="Wan2.2-Animate-2-14B"):
        config(INPUTS + ",animate2_reference_video")
    # the Animate DiT file in a plain image-to-video run: named, with the inputs that train it
    with pytest.raises(ConfigError, match="holds the Wan2.2-Animate adapter .*animate_pose_video"):
        Wan.load_pipeline(config("input_image"), torch.float32)


def test_plan_counts_the_adapter_of_the_real_model():
    from diffsynth.plan import lora_modules, model_entries
    from diffsynth.presets import load_preset
    cfg = load_preset(REPO / "presets" / "wan2.2-animate-14b-full.yaml", REPO / "presets")
    entries = {e.component: e for e in model_entries(cfg)}
    adapter = entries["animate_adapter"].module
    assert isinstance(adapter, animate_model.WanAnimateAdapter) and len(adapter.face_adapter.fuser_blocks) == 8
    assert entries["dit"].module.config.num_layers == 40 and not hasattr(entries["dit"].module, "face_adapter")
    lora = load_preset(REPO / "presets" / "wan2.2-animate-14b-lora.yaml", REPO / "presets")
    assert len(lora_modules(lora, {e.component: e for e in model_entries(lora)})) == 40 * 10


# ------------------------------------------------------------------------------------------------ conditioning
def test_conditioning_is_diffsynths(pipe):
    inputs = pipe.encode(item())
    assert inputs["latents"].shape == (1, 16, 3, 4, 4)
    assert inputs["y"].shape == (1, 20, 3, 4, 4) and inputs["clip_feature"].shape[0] == 1  # image-to-video
    # the pose clip cut to 9 - 4 = 5 frames: one latent frame fewer than the video's, VAE latents at the video's size
    assert inputs["pose_latents"].shape == (1, 16, 2, 4, 4)
    expected = pipe.encode_video(frames_to_tensor(item()["animate_pose_video"][:5]))
    assert torch.equal(inputs["pose_latents"], expected)
    # the face clip as pixels in [-1, 1], 5 frames of 512x512
    face = inputs["face_pixel_values"]
    assert face.shape == (1, 3, 5, 512, 512) and face.min() >= -1 and face.max() <= 1
    assert torch.equal(face, frames_to_tensor(item()["animate_face_video"][:5]))
    # a longer clip is cut the same way; a batch of two stacks
    assert torch.equal(pipe.encode(item(pose=17, face=13))["pose_latents"], inputs["pose_latents"])
    batch = pipe.collate([inputs, pipe.encode(item())])
    with torch.no_grad():
        assert pipe.predict(batch["latents"], torch.tensor([200.0, 700.0]), batch).shape == (2, 16, 3, 4, 4)


@pytest.mark.parametrize("bad,match", [
    (dict(pose=4), "animate_pose_video keeps 4 frames but the video needs 5"),
    (dict(face=3), "animate_face_video keeps 3 frames but the video needs 5"),
    (dict(frames=1), "at least 5"),
])
def test_bad_rows_are_named(pipe, bad, match):
    with pytest.raises(ValueError, match=match):
        pipe.encode(item(**bad))


def test_forward_is_the_i2v_dit_plus_the_animate_branch(pipe):
    inputs = pipe.encode(item())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(inputs["latents"].shape, generator=gen)
    t = torch.tensor([600.0])
    with torch.no_grad():
        ours = pipe.predict(x, t, inputs)
        plain = pipe.dit(hidden_states=torch.cat([x, inputs["y"]], dim=1), timestep=t,
                         encoder_hidden_states=inputs["prompt_emb"],
                         encoder_hidden_states_image=inputs["clip_feature"], return_dict=False)[0]
        other_face = pipe.predict(x, t, {**inputs, "face_pixel_values": -inputs["face_pixel_values"]})
        other_pose = pipe.predict(x, t, {**inputs, "pose_latents": inputs["pose_latents"] + 1})
    assert not torch.allclose(ours, plain) and not torch.allclose(ours, other_face)
    assert not torch.allclose(ours, other_pose)
    # with the pose embedding and the face blocks' output projections at zero, the animate branch adds nothing
    adapter = pipe.animate_adapter
    pipe.animate_adapter = silent = copy.deepcopy(adapter)
    try:
        with torch.no_grad():
            for module in (silent.pose_patch_embedding, *(b.linear2 for b in silent.face_adapter.fuser_blocks)):
                module.weight.zero_()
                module.bias.zero_()
            assert torch.allclose(pipe.predict(x, t, inputs), plain, atol=1e-5)
    finally:
        pipe.animate_adapter = adapter


def test_adapter_gradients_are_diffsynths(pipe):
    """DiffSynth trains animate_adapter with the motion encoder inside a re-entrant checkpoint of an input without
    gradient: every other part learns, the motion encoder gets none."""
    inputs = pipe.encode(item())
    adapter = pipe.animate_adapter
    adapter.requires_grad_(True)
    try:
        pipe.predict(torch.randn_like(inputs["latents"]), torch.tensor([500.0]), inputs).square().mean().backward()
        grads = {n: p.grad for n, p in adapter.named_parameters()}
        assert all(g is None for n, g in grads.items() if n.startswith("motion_encoder."))
        for part in ("pose_patch_embedding.", "face_encoder.", "face_adapter."):
            assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part
        assert WanAnimate.modules_without_gradient("animate_adapter", adapter) == ["motion_encoder"]
    finally:
        adapter.requires_grad_(False)
        adapter.zero_grad(set_to_none=True)


def test_samples_use_the_first_rows_clips_and_drop_the_reference_frame(pipe):
    pipe.encode(item())
    inputs = pipe.sample_inputs("a dancer", 32, 32, 9)
    assert inputs["pose_latents"].shape == (1, 16, 2, 4, 4) and inputs["face_pixel_values"].shape[2] == 5
    frames = pipe.render(inputs, seed=0, height=32, width=32, num_inference_steps=1, num_frames=9)
    assert len(frames) == 5 and frames[0].size == (32, 32)  # DiffSynth decodes without the reference latent frame
    with pytest.raises(ValueError, match="at least 5 frames"):
        pipe.sample_inputs("a dancer", 32, 32, 1)


# ------------------------------------------------------------------------------------------------ data
def test_data_check_names_short_clips_and_loads_the_face_at_512(clips, tmp_path, animate_base):
    from diffsynth.data.dataset import ImageRules, UnifiedDataset
    from diffsynth.data.validate import validate_dataset
    folder = tmp_path / "data"
    shutil.copytree(clips.parent, folder)
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    nine = rows[0]["video"]  # the built-in clips keep 9, 12 (-> 9), 13 and 17 frames, in that order
    rows[3]["animate_pose_video"] = nine   # the video keeps 17 frames: its pose clip needs 13, gives 9
    rows[2]["animate_face_video"] = "missing.mp4"
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rules = WanAnimate.data_rules(config())
    assert rules.video_keys == ("video", "animate_pose_video", "animate_face_video")
    assert rules.shorter_clip_keys == (("animate_pose_video", 4), ("animate_face_video", 4))
    assert rules.fixed_size_keys == (("animate_face_video", 512, 512),)
    image_rules = ImageRules(None, 32, 32, 16, 16, 17, 4, 1, fixed_sizes=rules.fixed_size_keys)
    report = validate_dataset(folder, folder / "metadata.csv", KEYS, image_rules, INPUTS,
                              video_keys=rules.video_keys, derived_inputs=rules.derived_inputs,
                              shorter_clip_keys=rules.shorter_clip_keys)
    problems = [(p["row"], p["column"]) for p in report.problems]
    assert problems == [(2, "animate_face_video"), (3, "animate_pose_video")], report.problems
    assert "need 13" in report.problems[1]["reason"]
    assert report.valid_rows == len(rows) - 2 and not report.warnings
    assert any(r.startswith("512x512x") for r in report.resolutions) and "32x32x17" in report.resolutions
    # the dataset loads the face clip at 512x512 and the others at the fixed 32x32, as DiffSynth's loader does
    dataset = UnifiedDataset(folder, folder / "metadata.csv", KEYS, image_rules, video_keys=rules.video_keys)
    row = dataset[0]
    assert row["video"][0].size == (32, 32) and row["animate_pose_video"][0].size == (32, 32)
    assert row["animate_face_video"][0].size == (512, 512) and len(row["animate_face_video"]) == len(row["video"])


def test_data_check_names_a_video_too_short_for_the_cut(clips, tmp_path):
    from diffsynth.data.dataset import ImageRules
    from diffsynth.data.validate import validate_dataset
    rules = WanAnimate.data_rules()
    report = validate_dataset(clips.parent, clips, KEYS, ImageRules(None, 32, 32, 16, 16, 1, 4, 1), INPUTS,
                              video_keys=rules.video_keys, derived_inputs=rules.derived_inputs,
                              shorter_clip_keys=rules.shorter_clip_keys)
    assert report.valid_rows == 0 and {p["column"] for p in report.problems} == {"video"}
    assert "needs at least 5" in report.problems[0]["reason"]


# ------------------------------------------------------------------------------------------------ a run
@pytest.mark.slow  # a short run of the tiny twin (tests/test_every_preset.py runs it through every stage)
def test_tiny_twin_trains_the_adapter_samples_and_exports(animate_base, clips, tmp_path):
    from diffsynth.export.run import base_model, export_checkpoint
    from diffsynth.models.components import detect, load_component
    from diffsynth.models.model_config import ModelConfig
    from diffsynth.training.loop import run_training
    data = preset_params(REPO / "presets" / "tiny" / "wan2.2-animate-14b-full.yaml")
    data["dataset"].update(source="local", dataset_base_path=str(clips.parent), dataset_metadata_path=str(clips))
    data["model"].update(model_id_with_origin_paths=ENTRIES, tokenizer_path=f"{REPO_ID}:google/umt5-xxl/")
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"].update(out_dir=str(tmp_path / "samples"), num_inference_steps=1)
    data["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["train"]["max_steps"] = 2
    data["validation"]["num_samples"] = 1
    data["cache"]["enabled"] = False
    cfg = config_from_dict(data)
    assert spec_for(cfg) is WanAnimate and cfg.train.trainable_models == "animate_adapter"
    result = run_training(cfg)
    assert result.steps == 2 and all(math.isfinite(loss) for _, loss in result.loss_history)
    assert list((tmp_path / "samples").rglob("*.png"))
    state = load_file(result.checkpoints[-1])
    # --remove_prefix_in_ckpt pipe.animate_adapter.: the released file's adapter keys, as DiffSynth's checkpoint
    with init_empty_weights():
        names = set(animate_model.WanAnimateAdapter(**animate_model.adapter_config(state)).state_dict())
    assert set(state) == names
    # the export: the whole Animate DiT with the trained adapter, reloadable as one
    configs = [ModelConfig(path=str(animate_base / REPO_ID / "diffusion_pytorch_model.safetensors"))]
    meta, load = base_model(configs, WanAnimate, "animate_adapter")
    out = export_checkpoint(result.checkpoints[-1], tmp_path / "export", [], WanAnimate, meta, load_base=load)
    assert out.compat["model"]["full_tensors"] == len(state)
    folder = out.files["model"]
    files = sorted(str(p) for p in folder.rglob("*.safetensors"))
    assert detect(files, "wan").kind.name == "wan_animate_dit"
    _, reloaded = load_component(ModelConfig(path=files), "wan", torch.float32)
    own = reloaded.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_training_the_adapter_checkpoints_the_frozen_dits_blocks(pipe):
    """DiffSynth's model_fn checkpoints the DiT blocks whichever model is trained: a full fine-tune of the adapter
    (the DiT frozen, so the trainer turns checkpointing on for the adapter only) recomputes the blocks in backward."""
    inputs = pipe.encode(item())
    calls, block = [], pipe.dit.blocks[0]
    forward = block.forward  # counted in forward itself: module hooks do not fire when a checkpoint recomputes

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)
    block.forward = counted
    adapter = pipe.animate_adapter
    adapter.requires_grad_(True)
    try:
        for flag in (False, True):
            adapter.gradient_checkpointing = flag
            calls.clear()
            pipe.predict(torch.randn_like(inputs["latents"]), torch.tensor([500.0]), inputs).mean().backward()
            assert len(calls) == (2 if flag else 1)  # forward, and again in backward when checkpointed
    finally:
        del block.forward
        adapter.gradient_checkpointing = False
        adapter.requires_grad_(False)
        adapter.zero_grad(set_to_none=True)
