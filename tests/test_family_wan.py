"""Wan2.1/2.2: every preset's tiny twin trains; the DiT sees the inputs DiffSynth gives it; the A14B expert
boundaries; DiffSynth's Wan command lines translate to the presets."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from accelerate import init_empty_weights
from PIL import Image
from safetensors.torch import load_file

from diffsynth.cli import main as cli_main
from diffsynth.command_line import config_from_args
from diffsynth.config import SECTIONS, config_from_dict
from diffsynth.export import export_checkpoint, original_weight_shapes
from diffsynth.families import get_spec
from diffsynth.families.wan import pipeline as wan
from diffsynth.presets import load_preset, preset_params, write_preset
from diffsynth.models.real_configs import REAL_MODELS, build_class
from diffsynth.models.tiny import write_tiny_model
from diffsynth.training import FlowMatchSchedule
from diffsynth.training.loop import run_training
from diffsynth.training.loss import flow_match_loss, velocity_mse
from helpers import REPO

PRESETS = ["wan2.1-t2v-1.3b-lora", "wan2.1-t2v-1.3b-full", "wan2.1-i2v-14b-lora", "wan2.2-ti2v-5b-lora",
           "wan2.2-a14b-high-noise-lora", "wan2.2-a14b-low-noise-lora"]
# tiny preset -> (folder under diffsynth-tiny/, the real DiT its keys must fit)
TINY = {"wan2.1-t2v-1.3b": ("Wan2.1-T2V-1.3B", "wan2.1-t2v-1.3b-dit"),
        "wan2.1-i2v-14b": ("Wan2.1-I2V-14B-480P", "wan2.1-i2v-14b-dit"),
        "wan2.2-ti2v-5b": ("Wan2.2-TI2V-5B", "wan2.2-ti2v-5b-dit"),
        "wan2.2-a14b": ("Wan2.2-T2V-A14B", "wan2.2-t2v-a14b-dit")}
# DiffSynth's q,k,v,o,ffn.0,ffn.2 in its own Wan DiT (the original Wan names), as its trainer saves them
LORA_MODULES = {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"}


@pytest.fixture(scope="module")
def wan_base(tmp_path_factory, monkeypatch_module):
    base = tmp_path_factory.mktemp("wan_models")
    for preset, (folder, _) in TINY.items():
        write_tiny_model(preset, base / "diffsynth-tiny" / folder)
    monkeypatch_module.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(base))
    monkeypatch_module.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
    return base


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"  # one database: migrations run once


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from diffsynth.data.sample_video import build_moving_shapes_dataset
    return build_moving_shapes_dataset(tmp_path_factory.mktemp("data") / "moving_shapes")


def preset_data(name: str, tiny: bool = True) -> dict:
    return preset_params(REPO / "presets" / ("tiny" if tiny else "") / f"{name}.yaml")


def twin_config(name, tmp_path, metadata, tracking_uri, **overrides):
    """The tiny twin of preset ``name`` on ``metadata``, short: 3 steps, one validation row, 2-step samples."""
    data = preset_data(name)
    data["dataset"].update(dataset_base_path=str(metadata.parent), dataset_metadata_path=str(metadata))
    data["output"]["output_path"] = str(tmp_path / "out")
    data["sample"]["out_dir"] = str(tmp_path / "samples")  # not the workspace's outputs/train/samples
    data["tracking"]["uri"] = tracking_uri
    data["train"]["max_steps"] = 3
    data["validation"]["num_samples"] = 1
    data["sample"].update(num_inference_steps=2, num_frames=5, prompts=["a red circle"],
                          out_dir=str(tmp_path / "samples"))
    data["cache"]["enabled"] = False  # encode online (tests/test_cache.py covers the cached mode)
    for key, value in overrides.items():
        section, field = key.split("__")
        data[section][field] = value
    return config_from_dict(data)


def real_dit(preset: str) -> torch.nn.Module:
    entry = REAL_MODELS[TINY[preset][1]]
    with init_empty_weights():
        return build_class(entry["cls"]).from_config(entry["config"])


# ---------------------------------------------------------------------------------- (a) presets train

@pytest.mark.parametrize("name", PRESETS)
def test_tiny_twin_trains_and_saves_keys_of_the_real_model(name, tmp_path, clips, wan_base, tracking_uri):
    config = twin_config(name, tmp_path, clips, tracking_uri)
    result = run_training(config)
    assert result.steps == 3
    assert all(math.isfinite(loss) for _, loss in result.loss_history)
    assert len(result.val_history) == 2 and all(math.isfinite(m["val_loss"]) for _, m in result.val_history)
    state = load_file(result.checkpoints[-1])
    dit = real_dit(config.model.tiny_preset)
    if config.lora.lora_base_model:
        modules = {k.rsplit(".lora_", 1)[0] for k in state}
        assert all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in state)
        # saved under DiffSynth's own (original Wan) module names, in both tiny blocks
        assert {m.split(".", 2)[2] for m in modules} == LORA_MODULES and len(modules) == 2 * len(LORA_MODULES)
        original = original_weight_shapes(dit, "wan")
        for module in modules:  # every key targets a 2-D weight of the full-size model, in its original names
            assert module in original, module
        # the preset's export formats: ComfyUI gets the original Wan names, every key fits the base model
        exported = export_checkpoint(result.checkpoints[-1], tmp_path / "export", config.export.formats, "wan",
                                     wan.Wan.load_pipeline(config, torch.float32).dit)
        assert exported.ok and set(exported.files) == {"diffusers", "comfyui"}
        comfy = load_file(str(exported.files["comfyui"]))
        assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in comfy
        assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in comfy
    else:
        real = dict(dit.named_parameters())
        assert set(state) == set(dict(run_dit_names(config)))  # the whole DiT, prefix removed
        assert all(k in real for k in state)


def run_dit_names(config):
    return wan.Wan.load_pipeline(config, torch.float32).dit.named_parameters()


# --------------------------------------------------------------------- (b) what the DiT is called with

def load(preset: str, extra: str | None = None) -> wan.Wan:
    folder, _ = TINY[preset]
    files = {"wan2.1-t2v-1.3b": ["diffusion_pytorch_model*.safetensors", "Wan2.1_VAE.pth"],
             "wan2.1-i2v-14b": ["diffusion_pytorch_model*.safetensors", "Wan2.1_VAE.pth",
                                "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"],
             "wan2.2-ti2v-5b": ["diffusion_pytorch_model*.safetensors", "Wan2.2_VAE.pth"]}[preset]
    model_id = f"diffsynth-tiny/{folder}"
    entries = [f"{model_id}:{f}" for f in files + ["models_t5_umt5-xxl-enc-bf16.pth"]]
    config = config_from_dict({"model": {"family": "wan", "model_id_with_origin_paths": ",".join(entries),
                                         "tokenizer_path": f"{model_id}:google/umt5-xxl/", "extra_inputs": extra},
                               "lora": {"lora_base_model": "dit"}})
    return wan.Wan.load_pipeline(config, torch.float32)


def example():
    """DiffSynth's inputs for a fixed example: 9 frames of 32x32 and a prompt."""
    frames = [Image.new("RGB", (32, 32), (200 - 20 * i, 40 + 10 * i, 90)) for i in range(9)]
    return {"video": frames, "prompt": "a red circle moving left to right"}


def dit_call(pipe, inputs, sigma=0.5):
    """Run the loss path once and return the keyword arguments the DiT received."""
    seen = {}
    handle = pipe.dit.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    t, s, _ = FlowMatchSchedule.for_family("wan").sigma_for(sigma)
    noise = torch.randn(inputs["latents"].shape, generator=torch.Generator().manual_seed(0))
    velocity_mse(pipe, inputs, noise, t, s)
    handle.remove()
    return seen, t


def check_prompt(pipe, emb):
    assert emb.shape == (1, wan.PROMPT_SEQ_LEN, 32) and wan.PROMPT_SEQ_LEN == 512
    length = len(pipe.tokenizer(example()["prompt"])["input_ids"])  # with the end token
    assert 1 < length < 512
    assert emb[0, :length].abs().sum(-1).min() > 0 and torch.all(emb[0, length:] == 0)  # zeroed past the prompt


def test_text_to_video_dit_inputs(wan_base):
    pipe = load("wan2.1-t2v-1.3b")
    inputs = pipe.encode(example())
    kw, t = dit_call(pipe, inputs)
    assert set(inputs) == {"latents", "prompt_emb"}
    assert kw["hidden_states"].shape == (1, 16, 3, 4, 4)  # (1, z, (F-1)/4+1, H/8, W/8)
    check_prompt(pipe, kw["encoder_hidden_states"])
    assert kw["encoder_hidden_states_image"] is None
    assert kw["timestep"].shape == (1,) and kw["timestep"].item() == t.item() and 400 < t.item() < 1000  # raw t
    assert pipe.height_factor == 16 and not pipe.require_vae_embedding and not pipe.fuse_first_frame


def test_image_to_video_dit_inputs(wan_base):
    with pytest.raises(ValueError, match="extra_inputs: input_image"):
        load("wan2.1-i2v-14b")
    pipe = load("wan2.1-i2v-14b", extra="input_image")
    item = example()
    inputs = pipe.encode(item)
    kw, _ = dit_call(pipe, inputs)
    x = kw["hidden_states"]
    assert x.shape == (1, 16 + 4 + 16, 3, 4, 4)  # noisy latents, then y = mask (4) + VAE latents (16)
    y = x[:, 16:]
    assert torch.equal(y, inputs["y"])
    mask = y[:, :4]
    assert torch.all(mask[:, :, 0] == 1) and torch.all(mask[:, :, 1:] == 0)  # first frame known, as 4 sub-frames
    first = wan.frames_to_tensor(item["video"][:1])
    expected = pipe.encode_video(torch.cat([first, torch.zeros(1, 3, 8, 32, 32)], dim=2))  # VAE([image, zeros...])
    assert torch.allclose(y[:, 4:], expected)
    clip = kw["encoder_hidden_states_image"]
    assert clip.shape == (1, 5, 32)  # (1, 257, 1280) at real size: penultimate-layer tokens of a 28x28 image
    pixels = torch.nn.functional.interpolate(first[:, :, 0], size=(28, 28), mode="bicubic", align_corners=False)
    pixels = (pixels * 0.5 + 0.5 - torch.tensor(wan.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(wan.CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(clip, pipe.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2])
    check_prompt(pipe, kw["encoder_hidden_states"])


def test_ti2v_keeps_the_first_frame_clean_at_timestep_zero(wan_base):
    pipe = load("wan2.2-ti2v-5b", extra="input_image")
    assert pipe.height_factor == 32 and pipe.fuse_first_frame
    inputs = pipe.encode(example())
    assert inputs["latents"].shape == (1, 48, 3, 2, 2)  # Wan2.2 VAE: 48 channels, /16
    assert inputs["first_frame_latents"].shape == (1, 48, 1, 2, 2)
    # the causal VAE encodes frame 0 alone: the first latent frame of the video is the image's latent
    assert torch.allclose(inputs["first_frame_latents"], inputs["latents"][:, :, :1], atol=1e-5)
    kw, t = dit_call(pipe, inputs, sigma=0.9)
    assert kw["hidden_states"].shape == (1, 48, 3, 2, 2)
    assert torch.equal(kw["hidden_states"][:, :, :1], inputs["first_frame_latents"])  # clean frame 0
    # per-token timesteps: 1 token per latent frame here (2x2 latents, 2x2 patches): frame 0 at 0, the rest at t
    assert kw["timestep"].shape == (1, 3) and kw["timestep"].tolist() == [[0.0, t.item(), t.item()]]
    frames = pipe.sample("a red circle", 0, 32, 32, 2, num_frames=5)
    assert len(frames) == 5 and frames[0].size == (32, 32)


def test_lora_target_mapping_and_size_rules():
    m = wan.map_wan_lora_target
    assert [m(t) for t in "q,k,v,o,ffn.0,ffn.2".split(",")] == \
        ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    assert m("blocks.3.self_attn.q") == "blocks.3.attn1.to_q" and m("cross_attn.k_img") == "attn2.add_k_proj"
    assert m("attn1.to_q") == "attn1.to_q" and m("head.head") == "proj_out"  # diffusers names pass unchanged
    ti2v = load_preset(REPO / "presets" / "wan2.2-ti2v-5b-lora.yaml")
    t2v = load_preset(REPO / "presets" / "wan2.1-t2v-1.3b-lora.yaml")
    spec = get_spec("wan")
    assert spec.data_rules(ti2v).size_factor == 32 and spec.data_rules(t2v).size_factor == 16
    assert spec.data_rules().video_keys == ("video",) and spec.data_rules().time_division_factor == 4
    assert spec.data_rules().derived_inputs == ("input_image",)  # the first frame, not a metadata column


@pytest.mark.parametrize("size,code", [("32", 0), ("48", 1)])
def test_data_validation_of_a_ti2v_dataset(size, code, clips, tmp_path):
    """`input_image` needs no column (it is the first frame); the Wan2.2 VAE needs sides of multiples of 32."""
    params = write_preset(REPO / "presets" / "tiny" / "wan2.2-ti2v-5b-lora.yaml", tmp_path / "params.yaml")
    args = ["data", "validate", "--report", str(tmp_path / "report.json"), "--params", str(params),
            "--dataset_base_path", str(clips.parent), "--dataset_metadata_path", str(clips),
            "--height", size, "--width", size]
    assert cli_main(args) == code
    report = (tmp_path / "report.json").read_text()
    assert ("not a multiple of 32" in report) == (code == 1) and "input_image" not in report


# ------------------------------------------------------------------------- (c) A14B expert boundaries

@pytest.mark.parametrize("name", ["wan2.2-a14b-high-noise-lora", "wan2.2-a14b-low-noise-lora"])
def test_a14b_experts_draw_only_their_timesteps(name):
    config = load_preset(REPO / "presets" / f"{name}.yaml")
    schedule = FlowMatchSchedule.for_family("wan")
    seen = []

    class Recorder:
        def predict(self, noisy, t, inputs):
            seen.append(t.item())
            return torch.zeros_like(noisy)

    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        flow_match_loss(Recorder(), schedule, {"latents": torch.zeros(1, 1, 1, 1, 1)}, generator,
                        config.train.min_timestep_boundary, config.train.max_timestep_boundary)
    assert 875 < schedule.timesteps[416].item() < 876  # the 417th grid point
    boundary = schedule.lookup(schedule.timesteps[416:417])[0].item()  # as the DiT sees it: bf16-rounded, 876
    if "high" in name:
        assert min(seen) >= boundary and max(seen) == 1000.0
    else:  # grid point 417 (875.0) rounds to 876 as well: both experts can see that value
        assert max(seen) <= boundary and min(seen) < 100


# ------------------------------------------------------------------------ (d) DiffSynth command lines

T2V_LORA_FLAGS = [
    "--dataset_base_path", "data/example_video_dataset",
    "--dataset_metadata_path", "data/example_video_dataset/metadata.csv", "--height", "480", "--width", "832",
    "--dataset_repeat", "100", "--model_id_with_origin_paths",
    "Wan-AI/Wan2.1-T2V-1.3B:diffusion_pytorch_model*.safetensors,Wan-AI/Wan2.1-T2V-1.3B:models_t5_umt5-xxl-enc-bf16.pth,"
    "Wan-AI/Wan2.1-T2V-1.3B:Wan2.1_VAE.pth",
    "--learning_rate", "1e-4", "--num_epochs", "5", "--remove_prefix_in_ckpt", "pipe.dit.",
    "--output_path", "./models/train/Wan2.1-T2V-1.3B_lora", "--lora_base_model", "dit",
    "--lora_target_modules", "q,k,v,o,ffn.0,ffn.2", "--lora_rank", "32"]


def a14b_flags(expert: str, lo: str, hi: str) -> list[str]:
    flags = copy.copy(T2V_LORA_FLAGS)
    flags[flags.index("--model_id_with_origin_paths") + 1] = (
        f"Wan-AI/Wan2.2-T2V-A14B:{expert}_noise_model/diffusion_pytorch_model*.safetensors,"
        "Wan-AI/Wan2.2-T2V-A14B:models_t5_umt5-xxl-enc-bf16.pth,Wan-AI/Wan2.2-T2V-A14B:Wan2.1_VAE.pth")
    flags[flags.index("--output_path") + 1] = f"./models/train/Wan2.2-T2V-A14B_{expert}_noise_lora"
    return flags + ["--num_frames", "49", "--max_timestep_boundary", hi, "--min_timestep_boundary", lo]


def i2v_a14b_flags(expert: str, lo: str, hi: str) -> list[str]:
    """DiffSynth's lora/Wan2.2-I2V-A14B.sh, one of its two commands."""
    flags = a14b_flags(expert, lo, hi)
    flags = [f.replace("Wan2.2-T2V-A14B", "Wan2.2-I2V-A14B") for f in flags]
    data = "data/diffsynth_example_dataset/wanvideo/Wan2.2-I2V-A14B"
    flags[flags.index("--dataset_base_path") + 1] = data
    flags[flags.index("--dataset_metadata_path") + 1] = f"{data}/metadata.csv"
    return flags + ["--extra_inputs", "input_image"]


def diffsynth_values(config) -> dict:
    """Every DiffSynth flag's value (our own keys left out), plus the family."""
    out = {"model.family": config.model.family}
    for section in SECTIONS:
        for f in getattr(config, section).__dataclass_fields__.values():
            if not f.metadata.get("ours"):
                out[f"{section}.{f.name}"] = getattr(getattr(config, section), f.name)
    return out


@pytest.mark.parametrize("name,flags", [
    ("wan2.1-t2v-1.3b-lora", T2V_LORA_FLAGS),
    ("wan2.2-a14b-high-noise-lora", a14b_flags("high", "0", "0.417")),
    ("wan2.2-a14b-low-noise-lora", a14b_flags("low", "0.417", "1")),
    ("wan2.2-i2v-a14b-high-noise-lora", i2v_a14b_flags("high", "0", "0.358")),
    ("wan2.2-i2v-a14b-low-noise-lora", i2v_a14b_flags("low", "0.358", "1")),
    ("wan2.1-t2v-14b-lora", [f.replace("1.3B", "14B") for f in T2V_LORA_FLAGS]),
])
def test_diffsynth_flags_give_the_preset(name, flags, capsys):
    assert cli_main(["params", "--from-args", *flags]) == 0
    printed = config_from_dict(yaml.safe_load(capsys.readouterr().out))
    preset = load_preset(REPO / "presets" / f"{name}.yaml")
    assert diffsynth_values(printed) == diffsynth_values(preset)
    # the family came from the Wan-AI ids; checkpointing is on because DiffSynth's Wan script forces it
    assert printed.model.family == "wan" and printed.gradient.use_gradient_checkpointing
    # our params files decide for themselves
    assert not config_from_args(flags, base={"model": {"family": "wan"}}).gradient.use_gradient_checkpointing


def test_gradient_checkpointing_gives_the_same_lora_gradients(wan_base, tmp_path, clips, tracking_uri):
    """The real presets turn checkpointing on (DiffSynth forces it for Wan): same gradients, recomputed."""
    from diffsynth.training.module import TrainingModule, configure_trainable
    grads = []
    for on in (False, True):
        config = twin_config("wan2.1-i2v-14b-lora", tmp_path, clips, tracking_uri,
                             gradient__use_gradient_checkpointing=on)
        torch.manual_seed(0)
        pipe = wan.Wan.load_pipeline(config, torch.float32)
        module = TrainingModule(pipe, FlowMatchSchedule.for_family("wan"), torch.Generator().manual_seed(0))
        configure_trainable(module, config, torch.float32)
        for p in module.parameters():  # LoRA B starts at zero: make the A gradients non-trivial
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
        assert pipe.dit.gradient_checkpointing is on
        module(example()).backward()
        grads.append({n: p.grad for n, p in module.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 2 * len(LORA_MODULES)
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_krea_realtime_video_is_wan_t2v_14b_behind_self_forcings_prefix(tmp_path, monkeypatch):
    """krea/krea-realtime-video ships one file in Wan-AI's names behind Self-Forcing's ``model.`` (DiffSynth's
    WanVideoDiTStateDictConverter strips it): the recipe reads as Wan, and the file loads as Wan2.1-T2V-14B's DiT."""
    from diffsynth.families.upstream import recognise, table
    from diffsynth.families.wan.convert import diffusers_to_wan_dit, wan_dit_to_diffusers
    from diffsynth.models.components import detect, plan_shapes

    recipe = next(r for r in table()["recipes"] if r["path"].endswith("lora/krea-realtime-video.sh"))
    args = recipe["commands"][0]["args"]
    assert recognise(args[args.index("--model_id_with_origin_paths") + 1]) == "wan"
    write_tiny_model("krea-realtime-video", tmp_path / "diffsynth-tiny" / "krea-realtime-video")
    folder = tmp_path / "diffsynth-tiny" / "krea-realtime-video"
    raw = load_file(folder / "krea-realtime-video-14b.safetensors")
    assert raw and all(k.startswith("model.") for k in raw) and "model.blocks.0.self_attn.q.weight" in raw
    assert detect([str(folder / "krea-realtime-video-14b.safetensors")], "wan").kind.name == "wan_dit_original"
    # the real file's architecture: Wan2.1-T2V-14B's keys behind the prefix match the DiT with nothing left over
    with init_empty_weights():
        t2v = build_class(REAL_MODELS["wan2.1-t2v-14b-dit"]["cls"]).from_config(
            REAL_MODELS["wan2.1-t2v-14b-dit"]["config"])
    shapes = {f"model.{k}": tuple(v.shape) for k, v in diffusers_to_wan_dit(t2v.state_dict()).items()}
    detected, _, (missing, unexpected, mismatched) = plan_shapes(shapes, "wan")
    assert (missing, unexpected, mismatched) == ([], [], []) and "wan2.1-t2v-14b-dit" in detected.variant

    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(tmp_path))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")
    params = preset_params(REPO / "presets" / "tiny" / "krea-realtime-video-full.yaml")
    pipe = wan.Wan.load_pipeline(config_from_dict(params), torch.float32)
    loaded = pipe.dit.state_dict()
    for key, value in wan_dit_to_diffusers(raw).items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("recipe,named", [("Wan2.2-S2V-14B", "Wan2.2-S2V-14B"),
                                          ("Video-As-Prompt-Wan2.1-14B", "Video-As-Prompt"),
                                          ("Wan-Dancer-14B-global", "Wan-Dancer-14B"),
                                          ("Wan-Dancer-14B-local", "Wan-Dancer-14B"),
                                          ("LongCat-Video", "LongCat-Video")])
def test_wan_recipes_we_do_not_train_are_refused_naming_the_model(recipe, named):
    """Pasted as DiffSynth writes them, the recipes of models not implemented here fail naming the model and what it
    lacks, not a flag or input to remove (which would then fail on the next one)."""
    from diffsynth.errors import ConfigError
    from diffsynth.families.upstream import table
    for kind in ("lora", "full"):
        found = [r for r in table()["recipes"] if r["path"].endswith(f"{kind}/{recipe}.sh")]
        assert found, (kind, recipe)
        with pytest.raises(ConfigError, match=named) as refused:
            config_from_args(found[0]["commands"][0]["args"])
        assert "use DiffSynth-Studio" in str(refused.value) and "Remove" not in str(refused.value)
