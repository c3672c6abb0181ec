"""The training engine's flags and behaviours, each shown by its effect."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.data.dataset import ImageRules, UnifiedDataset
from diffsynth.families.qwen_image import QwenImage
from diffsynth.training import FlowMatchSchedule
from diffsynth.families import get_spec
from diffsynth.training.lora import fuse_lora, load_lora_checkpoint
from diffsynth.training.loop import TrainingInterrupted, run_training
from diffsynth.training.module import TrainingModule, configure_trainable
from diffsynth.training.optim import Schedule
from helpers import REPO, tiny_config

from conftest import TINY_QWEN_MODELS, TINY_QWEN_TOKENIZER



def fresh_module(seed=0):
    torch.manual_seed(seed)
    config = config_from_dict({"model": {"model_id_with_origin_paths": TINY_QWEN_MODELS,
                                         "tokenizer_path": TINY_QWEN_TOKENIZER}, "lora": {"lora_base_model": "dit"}})
    pipe = QwenImage.load_pipeline(config, torch.float32)
    return TrainingModule(pipe, FlowMatchSchedule.for_family("qwen_image"), torch.Generator().manual_seed(0))


def items(metadata, n=2):
    ds = UnifiedDataset(metadata.parent, metadata, ["image"], ImageRules(max_pixels=4096))
    return [ds[i] for i in range(n)]


def grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}


# ------------------------------------------------------------------------------------------- LoRA flags

def test_preset_lora_is_fused_as_w_plus_ba(tmp_path, shapes_dataset, tiny_env):
    module = fresh_module()
    before = module.pipe.dit.transformer_blocks[0].attn.to_q.weight.detach().clone()
    a, b = torch.randn(4, 64), torch.randn(64, 4)
    save_file({"transformer_blocks.0.attn.to_q.lora_A.default.weight": a,
               "transformer_blocks.0.attn.to_q.lora_B.default.weight": b}, str(tmp_path / "preset.safetensors"))
    config = tiny_config(tmp_path, shapes_dataset, lora__preset_lora_path=str(tmp_path / "preset.safetensors"),
                         lora__preset_lora_model="dit")
    configure_trainable(module, config, torch.float32)
    after = module.pipe.dit.transformer_blocks[0].attn.to_q.base_layer.weight  # LoRA injected on top
    assert torch.allclose(after, before + b @ a, atol=1e-5)


def test_preset_lora_alpha_and_foreign_names():
    linear = torch.nn.Linear(3, 2, bias=False)
    w0 = linear.weight.detach().clone()
    a, b = torch.randn(4, 3), torch.randn(2, 4)
    model = torch.nn.ModuleDict({"proj": linear})
    fuse_lora(model, {"diffusion_model.proj.lora_down.weight": a, "diffusion_model.proj.lora_up.weight": b,
                      "diffusion_model.proj.alpha": torch.tensor(2.0)}, get_spec("qwen_image"))
    assert torch.allclose(linear.weight, w0 + (2.0 / 4) * b @ a, atol=1e-6)
    with pytest.raises(ValueError, match="does not have"):
        fuse_lora(model, {"other.lora_A.weight": a, "other.lora_B.weight": b}, get_spec("qwen_image"))


def test_comfyui_and_kohya_loras_load_onto_the_diffusers_modules():
    """A LoRA downloaded in ComfyUI (original Wan names) or kohya (fused FLUX qkv) names continues training."""
    from diffusers import FluxTransformer2DModel, WanTransformer3DModel
    from peft import LoraConfig, inject_adapter_in_model

    from diffsynth.export.lora_formats import lora_modules, write_format
    torch.manual_seed(0)
    models = {
        "wan": WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                     out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=1,
                                     cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        "flux": FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                       pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)),
    }
    for (family, model), fmt in [(("wan", models["wan"]), "comfyui"), (("flux", models["flux"]), "kohya")]:
        targets = ["attn1.to_q", "attn1.to_k"] if family == "wan" else ["attn.to_q", "attn.to_k", "attn.to_v"]
        inject_adapter_in_model(LoraConfig(r=6, lora_alpha=6, target_modules=targets), model)
        trained = {n: torch.randn_like(p) for n, p in model.named_parameters() if ".lora_" in n}
        file = write_format(lora_modules({k.replace(".default", ""): v for k, v in trained.items()}), fmt, family)
        assert all(k.startswith("diffusion_model.blocks." if fmt == "comfyui" else "lora_unet_") for k in file)
        for p in model.parameters():
            p.data.zero_() if ".lora_" in str(p) else None
        loaded = load_lora_checkpoint(model, file, get_spec(family))
        assert loaded == len(trained) // 2
        params = dict(model.named_parameters())
        for name in {k.split(".lora_")[0] for k in trained}:
            a, b = (params[f"{name}.lora_{x}.default.weight"] for x in "AB")
            ta, tb = (trained[f"{name}.lora_{x}.default.weight"] for x in "AB")
            assert torch.allclose(b @ a, tb @ ta, atol=1e-5), (family, name)


def test_lora_checkpoint_continues_from_the_file(tmp_path, shapes_dataset, tiny_env):
    module = fresh_module()
    config = tiny_config(tmp_path, shapes_dataset)
    configure_trainable(module, config, torch.float32)
    trained = {k: torch.randn_like(v) for k, v in module.pipe.dit.state_dict().items() if ".lora_" in k}
    save_file(trained, str(tmp_path / "epoch-0.safetensors"))
    again = fresh_module(seed=1)
    config = tiny_config(tmp_path, shapes_dataset, lora__lora_checkpoint=str(tmp_path / "epoch-0.safetensors"))
    configure_trainable(again, config, torch.float32)
    state = again.pipe.dit.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items())


def test_lora_alpha_scales_the_update(tmp_path, shapes_dataset, tiny_env):
    module = fresh_module()
    configure_trainable(module, tiny_config(tmp_path, shapes_dataset, lora__lora_alpha=16), torch.float32)
    assert module.pipe.dit.transformer_blocks[0].attn.to_q.scaling["default"] == 16 / 8
    module = fresh_module()
    configure_trainable(module, tiny_config(tmp_path, shapes_dataset), torch.float32)
    assert module.pipe.dit.transformer_blocks[0].attn.to_q.scaling["default"] == 1.0  # DiffSynth: alpha = rank


def test_target_modules_single_entry_is_a_regex_and_empty_auto_detects(tmp_path, shapes_dataset, tiny_env):
    module = fresh_module()
    configure_trainable(module, tiny_config(tmp_path, shapes_dataset,
                                            lora__lora_target_modules=r"transformer_blocks\.0\.attn\.to_q"), torch.float32)
    names = {n.split(".lora_")[0] for n, p in module.named_parameters() if p.requires_grad}
    assert names == {"pipe.dit.transformer_blocks.0.attn.to_q"}
    module = fresh_module()
    with pytest.raises(ValueError, match="no Linear layer with both sides >= 512"):
        configure_trainable(module, tiny_config(tmp_path, shapes_dataset, lora__lora_target_modules=""), torch.float32)


def test_trainable_models_and_dotted_submodules(tmp_path, shapes_dataset, tiny_env):
    module = fresh_module()
    names = configure_trainable(module, tiny_config(tmp_path, shapes_dataset, lora__lora_base_model=None,
                                                    train__trainable_models="dit.transformer_blocks.1,vae.decoder"),
                                torch.float32)
    assert names and all(n.startswith(("pipe.dit.transformer_blocks.1.", "pipe.vae.decoder.")) for n in names)
    assert any(n.startswith("pipe.vae.decoder.") for n in names)
    with pytest.raises(ConfigError, match="'unet' is not a model"):
        configure_trainable(fresh_module(), tiny_config(tmp_path, shapes_dataset, train__trainable_models="unet"),
                            torch.float32)


# ------------------------------------------------------------------------------------------- gradients

def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, shapes_dataset, tiny_env):
    item = items(shapes_dataset, 1)[0]
    results = []
    for checkpointing, offload in ((False, False), (True, False), (False, True)):
        module = fresh_module()
        configure_trainable(module, tiny_config(tmp_path, shapes_dataset, gradient__use_gradient_checkpointing=checkpointing,
                                                gradient__use_gradient_checkpointing_offload=offload), torch.float32)
        assert module.pipe.dit.gradient_checkpointing is (checkpointing or offload)  # offload implies checkpointing
        module.offload_activations = offload
        module.train()
        module.generator.manual_seed(7)
        module(item).backward()
        results.append(grads(module))
    for other in results[1:]:
        assert results[0].keys() == other.keys()
        for k in results[0]:
            assert torch.allclose(results[0][k], other[k], atol=1e-6), k


def test_accumulation_of_two_equals_mean_of_the_two_gradients(tmp_path, shapes_dataset, tiny_env):
    pair = items(shapes_dataset, 2)
    single = []
    module = fresh_module()
    configure_trainable(module, tiny_config(tmp_path, shapes_dataset), torch.float32)
    torch.nn.init.normal_(module.pipe.dit.transformer_blocks[0].attn.to_q.lora_B.default.weight)  # non-zero grads for A
    module.generator.manual_seed(3)
    states = []
    for item in pair:
        states.append(module.generator.get_state())
        module.zero_grad()
        module(item).backward()
        single.append(grads(module))
    accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
    module.zero_grad()
    for item, state in zip(pair, states):
        module.generator.set_state(state)
        with accelerator.accumulate(module):
            accelerator.backward(module(item))
    accumulated = grads(module)
    for k in accumulated:
        assert torch.allclose(accumulated[k], (single[0][k] + single[1][k]) / 2, atol=1e-6), k


def test_lr_schedulers():
    def lrs(name, warmup=0, processes=1, steps=8):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = Schedule(opt, name, warmup, processes), []
        for _ in range(steps):
            out.append(sched.lr())
            opt.step()
            sched.step()
        return out
    assert lrs("constant") == [1.0] * 8
    assert lrs("constant_with_warmup", warmup=4) == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 1, 1])  # diffusers' convention
    # DiffSynth's hidden ConstantLR: 5 scheduler steps at lr/3, stepped once per process by accelerate
    assert lrs("diffsynth") == pytest.approx([1 / 3] * 5 + [1.0] * 3)
    assert lrs("diffsynth", processes=4) == pytest.approx([1 / 3, 1 / 3, 1, 1, 1, 1, 1, 1])


# ------------------------------------------------------------------------------------------- runs

@pytest.mark.slow
def test_run_level_flags(tmp_path, shapes_dataset, tiny_env):
    config = tiny_config(tmp_path / "a", shapes_dataset, train__max_steps=6, train__max_grad_norm=1e-3,
                         train__customized_optimizer="torch.optim.SGD", dataset__dataset_repeat=2,
                         train__min_timestep_boundary=0.9, train__max_timestep_boundary=1.0,
                         tracking__enable_csv_log=True)
    run_training(config)
    rows = [line.split(",") for line in (tmp_path / "a/out/loss.csv").read_text().splitlines()[1:]]
    norms = [float(v) for _, k, v in rows if k == "grad_norm"]
    assert len(norms) == 6 and all(n > 1e-3 for n in norms)  # measured before clipping to 1e-3
    args = json.loads((tmp_path / "a/out/training_args.json").read_text())
    assert args["train"]["customized_optimizer"] == "torch.optim.SGD"
    # repeat 2 doubles the epoch: a full epoch is 64 steps
    full = run_training(tiny_config(tmp_path / "b", shapes_dataset, dataset__dataset_repeat=2, train__num_epochs=1,
                                    validation__num_samples=1,
                                    sample__prompts=[]))
    assert full.steps == 64


@pytest.mark.slow
def test_resume_is_exact(tmp_path, shapes_dataset, tiny_env, monkeypatch):
    """16 steps in one go == 7 steps, SIGTERM, resume: identical weights, optimizer, lr sequence and data order."""
    overrides = dict(train__max_steps=16, validation__num_samples=1, sample__prompts=[], tracking__enable_csv_log=True,
                     train__lr_scheduler="cosine", train__lr_warmup_steps=3, train__lr_min_ratio=0.1)
    run_training(tiny_config(tmp_path / "straight", shapes_dataset, **overrides))

    calls = {"n": 0}
    original = TrainingModule.forward

    def forward_then_signal(self, item):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, item)

    monkeypatch.setattr(TrainingModule, "forward", forward_then_signal)
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(tmp_path / "resumed", shapes_dataset, **overrides))
    meta = json.loads((tmp_path / "resumed/out/state/meta.json").read_text())
    assert meta["step"] == 7 and not meta["finished"]
    monkeypatch.setattr(TrainingModule, "forward", original)
    result = run_training(tiny_config(tmp_path / "resumed", shapes_dataset, **overrides))
    assert result.resumed_from_step == 7 and result.steps == 16
    a = load_file(str(tmp_path / "straight/out/epoch-0.safetensors"))
    b = load_file(str(tmp_path / "resumed/out/epoch-0.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def lrs(run):
        rows = [line.split(",") for line in (tmp_path / run / "out/loss.csv").read_text().splitlines()[1:]]
        return [(int(s), float(v)) for s, k, v in rows if k == "lr"]
    assert lrs("resumed") == lrs("straight")
    assert [s for s, _ in lrs("straight")] == list(range(1, 17))
    assert lrs("straight")[-1][1] < lrs("straight")[3][1] == pytest.approx(0.002)  # warmed up, then decayed


@pytest.mark.slow
def test_resume_with_changed_params_is_refused(tmp_path, shapes_dataset, tiny_env, monkeypatch):
    overrides = dict(train__max_steps=10, validation__num_samples=1, sample__prompts=[])
    original = TrainingModule.forward

    def forward_then_signal(self, item):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, item)

    monkeypatch.setattr(TrainingModule, "forward", forward_then_signal)
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(tmp_path, shapes_dataset, **overrides))
    monkeypatch.setattr(TrainingModule, "forward", original)
    with pytest.raises(ConfigError, match=r"lora\.lora_rank"):
        run_training(tiny_config(tmp_path, shapes_dataset, lora__lora_rank=4, **overrides))
    # never: start over
    result = run_training(tiny_config(tmp_path, shapes_dataset, lora__lora_rank=4, train__resume="never", **overrides))
    assert result.resumed_from_step is None and result.steps == 10


def _write_params(tmp_path, shapes_dataset, model_base, **overrides):
    config = tiny_config(tmp_path, shapes_dataset, **overrides)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    env = dict(os.environ, DIFFSYNTH_MODEL_BASE_PATH=str(model_base), DIFFSYNTH_SKIP_DOWNLOAD="true",
               PYTHONPATH=str(REPO))
    return path, env


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_continues_the_same_mlflow_run(tmp_path, shapes_dataset, model_base):
    params, env = _write_params(tmp_path, shapes_dataset, model_base, train__num_epochs=2,
                                validation__num_samples=1, sample__prompts=[], tracking__enable_csv_log=True)
    cmd = [sys.executable, "-m", "diffsynth.train", "--params", str(params)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    csv = tmp_path / "out" / "loss.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not csv.exists() or csv.read_text().count("\n") < 20):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "writing a resumable state" in out
    meta = json.loads((tmp_path / "out/state/meta.json").read_text())
    assert 0 < meta["step"] < 64 and not meta["finished"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming at step {meta['step']}" in done.stdout
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("diffsynth").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, 65))


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, shapes_dataset, model_base):
    params, env = _write_params(tmp_path, shapes_dataset, model_base, train__max_steps=6,
                                validation__num_samples=1, sample__prompts=[])
    env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "diffsynth.train", "--params", str(params)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    args = json.loads((tmp_path / "out/training_args.json").read_text())
    assert args["world_size"] == 2
    line = next(l for l in proc.stdout.splitlines() if "checksums per rank" in l)
    sums = json.loads(line.split(":", 1)[1].strip())
    assert len(sums) == 2 and sums[0] == sums[1]


def test_adamw_is_fused_unless_turned_off(tmp_path, shapes_dataset):
    from diffsynth.training.optim import build_optimizer
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(tiny_config(tmp_path, shapes_dataset), params).defaults["fused"] is True
    off = build_optimizer(tiny_config(tmp_path, shapes_dataset, train__fused_optimizer=False), params)
    assert not off.defaults["fused"]
    sgd = build_optimizer(tiny_config(tmp_path, shapes_dataset, train__customized_optimizer="torch.optim.SGD"), params)
    assert isinstance(sgd, torch.optim.SGD)


def test_resume_from_checkpoint_loads_full_weights_with_the_prefix(tmp_path, shapes_dataset, tiny_env):
    from diffsynth.training.module import load_full_checkpoint
    module = fresh_module()
    saved = {k: torch.full_like(v, 0.5) for k, v in module.pipe.dit.state_dict().items() if "transformer_blocks.1." in k}
    save_file(saved, str(tmp_path / "epoch-1.safetensors"))
    load_full_checkpoint(module, str(tmp_path / "epoch-1.safetensors"), "pipe.dit.")
    assert all(torch.equal(module.pipe.dit.state_dict()[k], v) for k, v in saved.items())
    lora = {"transformer_blocks.0.attn.to_q.lora_A.default.weight": torch.zeros(8, 64)}
    save_file(lora, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ConfigError, match="lora.lora_checkpoint"):
        load_full_checkpoint(module, str(tmp_path / "lora.safetensors"), "pipe.dit.")
