"""Wan2.2-Animate-2-14B: the variant chosen by animate2_reference_video (partial inputs and the wrong DiT refused by
name), DiffSynth's conditioning (reference image frame prepended, y, reference latents), the in-context attention
mask, the reference K/V cache giving the training forward's prediction, LoRA targets and dotted trainable names as
DiffSynth writes them, diffusers export names, and the data check. Parity with DiffSynth: tests/parity (animate2)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.families import spec_for
from diffsynth.families.wan import animate2_model
from diffsynth.families.wan.animate2 import WanAnimate2
from diffsynth.models.tiny import write_tiny_model

REPO_ID = "diffsynth-tiny/Wan2.2-Animate-2-14B"
ENTRIES = ",".join(f"{REPO_ID}:{f}" for f in (
    "videomodel/Wan-AI/models_t5_umt5-xxl-enc-bf16.pth",
    "videomodel/Wan-AI/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "Wan2.1_VAE.pth",
    "wan_animate_2/wan_animate_2_bf16.safetensors"))
INPUTS = "animate2_prompt_ref,animate2_reference_image,animate2_reference_video"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("animate2_models")
    write_tiny_model("wan2.2-animate-2-14b", base / REPO_ID)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(base))
        mp.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
        yield base


def config(extra_inputs=INPUTS, entries=ENTRIES):
    return config_from_dict({"model": {"family": "wan", "model_id_with_origin_paths": entries,
                                       "tokenizer_path": f"{REPO_ID}:google/umt5-xxl/", "extra_inputs": extra_inputs},
                             "dataset": {"data_file_keys": "video,animate2_reference_image,animate2_reference_video"},
                             "lora": {"lora_base_model": "dit",
                                      "lora_target_modules": "self_attn.q,self_attn.k,self_attn.v"}})


@pytest.fixture(scope="module")
def pipe(models):
    return WanAnimate2.load_pipeline(config(), torch.float32)


def item(frames=9, reference_frames=9):
    return {"video": [Image.new("RGB", (32, 48), (200 - 20 * i, 40 + 10 * i, 90)) for i in range(frames)],
            "prompt": "a dancer", "animate2_prompt_ref": "the person moves, the background stays still",
            "animate2_reference_image": [Image.new("RGB", (40, 40), (10, 200, 30))],
            "animate2_reference_video": [Image.new("RGB", (32, 48), (25 * i, 0, 0)) for i in range(reference_frames)]}


def test_the_variant_is_chosen_by_the_reference_video_and_partial_inputs_are_refused():
    assert spec_for(config()) is WanAnimate2
    with pytest.raises(ConfigError, match="three inputs together"):
        config(extra_inputs="animate2_prompt_ref,animate2_reference_image")
    with pytest.raises(ConfigError, match="Wan2.2-Animate"):  # two variants mixed: named
        config(extra_inputs=INPUTS + ",animate_pose_video")


def test_the_animate2_dit_is_refused_without_its_inputs_and_another_dit_with_them(models):
    with pytest.raises(ConfigError, match="Wan2.2-Animate-2-14B's"):
        spec_for(config("")).load_pipeline(config(""), torch.float32)


def test_conditioning_as_diffsynths_units(pipe):
    inputs = pipe.encode(item())
    video_frames = 3  # 9 frames
    assert inputs["latents"].shape == (1, 16, video_frames + 1, 6, 4)  # the reference image's frame first
    assert inputs["y"].shape == (1, 20, video_frames + 1, 6, 4)
    assert torch.equal(inputs["y"][:, :4, 0], torch.ones_like(inputs["y"][:, :4, 0]))
    assert not inputs["y"][:, :4, 1:].any()
    torch.testing.assert_close(inputs["y"][:, 4:, :1], inputs["latents"][:, :, :1])  # the same reference latents
    assert inputs["reference_latents"].shape == (1, 16, video_frames, 6, 4)
    assert inputs["prompt_ref_emb"].shape[1] == 512 and not torch.equal(inputs["prompt_ref_emb"], inputs["prompt_emb"])
    # the reference video is cut to the video's frames
    longer = pipe.encode(item(reference_frames=13))
    torch.testing.assert_close(longer["reference_latents"], inputs["reference_latents"])


def test_in_context_mask_pairs_each_frame_with_the_reference_frame_before_it():
    mask = animate2_model.incontext_mask(frames=3, reference_frames=2, hw=2)
    assert mask.shape == (6, 10) and mask[:, :6].all()
    reference = mask[:, 6:].int()
    assert reference.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def test_reference_cache_gives_the_training_forward(pipe):
    inputs = pipe.encode(item())
    noisy = torch.randn_like(inputs["latents"])
    t = torch.tensor([700.0])
    with torch.no_grad():
        trained = pipe.predict(noisy, t, inputs)
        cache = []
        first = pipe.predict(noisy, t, {**inputs, "reference_cache": cache})
        again = pipe.predict(noisy, t, {**inputs, "reference_cache": cache})
        shorter = pipe.predict(noisy, t, pipe.encode(item(reference_frames=5)))
    assert len(cache) == 40
    torch.testing.assert_close(first, trained)
    torch.testing.assert_close(again, trained)
    assert not torch.allclose(shorter, trained)  # the reference video conditions the prediction


def test_lora_targets_and_full_recipe_names_are_diffsynths(pipe):
    names = dict(pipe.dit.named_modules())
    assert "blocks.39.block.self_attn.q" in names and "blocks.0.block.cross_attn.k_img" in names
    targets = WanAnimate2.lora_targets_for("dit", pipe.dit, ["self_attn.q", "self_attn.k", "self_attn.v"])
    assert WanAnimate2.map_lora_targets(pipe.dit, ["self_attn.q"]) == ["self_attn.q"]
    assert targets
    assert isinstance(pipe.get_submodule("dit.blocks.7.block.self_attn.v"), torch.nn.Linear)


def test_diffusers_names_round_trip():
    for name in ("blocks.3.block.self_attn.q", "blocks.3.block.cross_attn.o", "blocks.0.block.cross_attn.k_img",
                 "blocks.0.block.ffn.0", "head.head", "img_emb.proj.1"):
        assert animate2_model.from_diffusers_name(animate2_model.to_diffusers_name(name)) == name
    assert animate2_model.to_diffusers_name("blocks.3.block.cross_attn.o") == "blocks.3.cross_attn.to_out.0"
    assert animate2_model.to_diffusers_name("blocks.0.block.cross_attn.norm_k_img.weight") == \
        "blocks.0.cross_attn.norm_added_k.weight"


def test_samples_use_the_reference_and_drop_its_frame(pipe):
    pipe.encode(item())
    inputs = pipe.sample_inputs("a dancer", 48, 32, 9)
    frames = pipe.render(inputs, 0, 48, 32, 2, 9, cfg_scale=2.0, negative_inputs=pipe.sample_inputs("", 48, 32, 9))
    assert len(frames) == 9 and frames[0].size == (32, 48)


def test_data_check_names_bad_rows(tmp_path):
    """A row without its reference prompt or with a missing reference image is named; a shorter reference video
    is a warning (DiffSynth leaves the last frames without a reference)."""
    import csv

    from diffsynth.data.dataset import ImageRules
    from diffsynth.data.sample_video import build_moving_shapes_control_dataset
    from diffsynth.data.validate import validate_dataset
    keys = "video,animate2_reference_image,animate2_reference_video"
    metadata = build_moving_shapes_control_dataset(tmp_path / "d", tuple(keys.split(",")[1:]))
    rows = list(csv.DictReader(open(metadata)))
    assert all(r["animate2_prompt_ref"] for r in rows)  # the built-in rows drive the tiny twins
    rows[1]["animate2_prompt_ref"] = ""
    rows[2]["animate2_reference_image"] = "missing.png"
    rows[3]["animate2_reference_video"] = rows[0]["animate2_reference_video"]  # 9 frames for a 17-frame video
    with open(metadata, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rules = WanAnimate2.data_rules(config())
    report = validate_dataset(metadata.parent, metadata, keys, ImageRules(None, 32, 32, 16, 16, 17, 4, 1), INPUTS,
                              video_keys=rules.video_keys, derived_inputs=rules.derived_inputs,
                              frame_matched_keys=rules.frame_matched_keys)
    assert [(p["row"], p["column"]) for p in report.problems] == [(1, "animate2_prompt_ref"),
                                                                   (2, "animate2_reference_image")], report.problems
    assert [(w["row"], w["column"]) for w in report.warnings if "frames" in w["reason"]] == \
        [(3, "animate2_reference_video")]
