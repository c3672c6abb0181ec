"""Low-memory modes: DiffSynth's --quant_options (methods accepted/refused as DiffSynth does, quantized-base LoRA
trains on every family's twin, close to bf16 on a real-width block), model/optimizer CPU offload and
--offload_models (bit-identical to resident training), and the recipes pasted as DiffSynth writes them."""
from __future__ import annotations

import copy
import math
import shlex
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from diffsynth.command_line import config_from_args
from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth.families import get_spec
from diffsynth.models import quantize as Q
from diffsynth.models.offload import OffloadManager, find_units
from diffsynth.models.tiny import write_tiny_model
from diffsynth.presets import preset_params
from diffsynth.training import FlowMatchSchedule
from diffsynth.training.loop import TrainingModule, configure_trainable
from diffsynth.training.memory import apply_memory_modes
from helpers import REPO

# DiffSynth's registered methods (diffsynth/core/quant/backends/*.py at fed7b18f) and its verdict for training:
# is_differentiable from each backend's capabilities(); torchao's differentiable set is
# {Int8WeightOnlyConfig, Float8WeightOnlyConfig, NVFP4WeightOnlyConfig}.
DIFFSYNTH_METHODS = {
    "bitsandbytes_nf4": True, "bitsandbytes_fp4": True,
    "torchao_int8_w8a16": True, "torchao_fp8_w8a16": True, "torchao_nvfp4_w4a16": True,
    "torchao_int4_w4a16": False, "torchao_int8_w8a8": False, "torchao_fp8_w8a8": False, "torchao_int4_w4a8": False,
    "torchao_mxfp8_w8a8": False, "torchao_mxfp4_w4a4": False, "torchao_nvfp4_w4a4": False,
    "comfy_kitchen_int8_w8a8": True, "comfy_kitchen_fp8_w8a8": True,
}
PACKAGE = {"bitsandbytes": "bitsandbytes", "torchao": "torchao", "comfy_kitchen": "comfy_kitchen"}

# DiffSynth's examples/qwen_image/model_training/special/quant_training/Qwen-Image-2512-bitsandbytes_nf4.sh as
# written; only the dataset and output paths are placeholders. The model ids resolve to the tiny twin, which
# the test puts at Qwen/Qwen-Image and Qwen/Qwen-Image-2512 of its model base.
QWEN_2512_NF4_SH = """
  --dataset_base_path {data} \\
  --dataset_metadata_path {metadata} \\
  --max_pixels 1048576 \\
  --dataset_repeat 50 \\
  --model_id_with_origin_paths "Qwen/Qwen-Image-2512:transformer/diffusion_pytorch_model*.safetensors,Qwen/Qwen-Image:text_encoder/model*.safetensors,Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors" \\
  --quant_options "Qwen/Qwen-Image-2512:transformer/diffusion_pytorch_model*.safetensors:bitsandbytes_nf4/img_mod.1,txt_mod.1,norm_out.linear,img_in,txt_in,proj_out,timestep_embedder.linear_1,timestep_embedder.linear_2" \\
  --learning_rate 1e-4 \\
  --num_epochs 5 \\
  --remove_prefix_in_ckpt "pipe.dit." \\
  --output_path "{out}" \\
  --lora_base_model "dit" \\
  --lora_target_modules "to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out,img_mlp.net.2,img_mod.1,txt_mlp.net.2,txt_mod.1" \\
  --lora_rank 32 \\
  --use_gradient_checkpointing \\
  --dataset_num_workers 8 \\
  --find_unused_parameters
"""
NF4_EXCLUDES = ["img_mod.1", "txt_mod.1", "norm_out.linear", "img_in", "txt_in", "proj_out",
                "timestep_embedder.linear_1", "timestep_embedder.linear_2"]
TWINS = {"qwen-image-lora": ("qwen-image", "Qwen-Image"), "flux.1-dev-lora": ("flux.1-dev", "FLUX.1-dev"),
         "wan2.2-ti2v-5b-lora": ("wan2.2-ti2v-5b", "Wan2.2-TI2V-5B")}


def needs(method: str):
    pytest.importorskip(PACKAGE[Q.METHODS[method].backend], reason="optional extra: pip install -e '.[quant]'")


def cpu_accelerator(**kw):
    return SimpleNamespace(device=torch.device("cpu"), num_processes=1, distributed_type=DistributedType.NO,
                           is_main_process=True, device_placement=True, **kw)


# ------------------------------------------------------------------------------- grammar and method table

def test_method_table_is_diffsynths():
    assert {name: m.differentiable for name, m in Q.METHODS.items()} == DIFFSYNTH_METHODS


@pytest.mark.parametrize("method", sorted(DIFFSYNTH_METHODS))
def test_each_method_accepted_or_refused_as_diffsynth_does(method):
    entry = f"Qwen/Qwen-Image-2512:transformer/diffusion_pytorch_model*.safetensors:{method}/img_mod.1,txt_mod.1"
    if DIFFSYNTH_METHODS[method]:
        spec = Q.parse_quant_options(entry)["Qwen/Qwen-Image-2512:transformer/diffusion_pytorch_model*.safetensors"]
        assert spec == Q.QuantSpec(method, ("img_mod.1", "txt_mod.1"))
        needs(method)
        lin = torch.nn.Linear(64, 32).requires_grad_(False)
        q = Q.quantized_linear(lin, method)
        assert isinstance(q, torch.nn.Linear) and Q.is_quantized(q)
        x = torch.randn(3, 64, requires_grad=True)
        (grad,) = torch.autograd.grad(q(x).square().sum(), x)  # gradients pass through to LoRA below
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        rel = ((q(x) - lin(x)).norm() / lin(x).norm()).item()
        assert rel < 0.3, f"{method}: output relative error {rel}"
    else:
        with pytest.raises(ConfigError, match=f"{method}.*not differentiable"):
            Q.parse_quant_options(entry)


def test_grammar_as_diffsynth_parses_it():
    parsed = Q.parse_quant_options("a:b/c.safetensors:bitsandbytes_nf4;;dit:torchao_int8_w8a16/x,y.z;text:")
    assert parsed == {"a:b/c.safetensors": Q.QuantSpec("bitsandbytes_nf4"),  # method = after the LAST ':'
                      "dit": Q.QuantSpec("torchao_int8_w8a16", ("x", "y.z"))}  # empty entry and method skipped
    assert Q.parse_quant_options(None) == {} and Q.parse_quant_options("") == {}
    with pytest.raises(ConfigError, match="expected <model>:<method>"):
        Q.parse_quant_options("bitsandbytes_nf4")
    with pytest.raises(ConfigError, match="unknown quantization method 'nf4'"):
        Q.parse_quant_options("dit:nf4")


def test_a_method_whose_kernels_fail_here_is_one_line_naming_it(monkeypatch):
    needs("torchao_fp8_w8a16")

    def no_kernel(*a, **k):
        raise NotImplementedError("Float8 weight-only needs sm_89\nmore")
    monkeypatch.setattr(Q, "_torchao_linear", no_kernel)
    monkeypatch.setitem(Q._BUILDERS, "torchao", no_kernel)
    with pytest.raises(Q.QuantError) as e:
        Q.probe("torchao_fp8_w8a16", "cpu", torch.bfloat16)
    msg = str(e.value)
    assert "\n" not in msg and "torchao_fp8_w8a16" in msg and "needs a CUDA GPU" in msg and "bitsandbytes_nf4" in msg


def test_missing_backend_names_the_extra(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("comfy_kitchen"):
            raise ImportError("No module named 'comfy_kitchen'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.setattr(Q.importlib, "import_module", lambda n: fake(n))
    with pytest.raises(Q.QuantError, match=r"comfy-kitchen package.*pip install -e '\.\[quant\]'"):
        Q.probe("comfy_kitchen_int8_w8a8", "cpu", torch.float32)


def test_excludes_and_trainable_layers():
    needs("torchao_int8_w8a16")
    from peft import LoraConfig, inject_adapter_in_model
    net = torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([torch.nn.ModuleDict(
        {"img_mod": torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(16, 16)), "to_q": torch.nn.Linear(16, 16)})
        for _ in range(2)]), "proj_out": torch.nn.Linear(16, 4)}).requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["to_q", "img_mod.1"]), net)
    done = Q.quantize_model(net, Q.QuantSpec("torchao_int8_w8a16", ("img_mod.1", "proj_out")))
    # the LoRA layer's base_layer is quantized under its own name; excluded suffixes (even under LoRA) stay fp
    assert sorted(done) == ["blocks.0.to_q", "blocks.1.to_q"]
    assert Q.is_quantized(net["blocks"][0]["to_q"].base_layer)
    assert not Q.is_quantized(net["blocks"][0]["img_mod"][1].base_layer)
    assert net["blocks"][0]["to_q"].lora_A.default.weight.dtype == torch.float32
    net["proj_out"].requires_grad_(True)
    with pytest.raises(ConfigError, match="'proj_out'.*trained fully"):
        Q.quantize_model(net, Q.QuantSpec("torchao_int8_w8a16"))


# ------------------------------------------------------------------------------- on the family twins

@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    base = tmp_path_factory.mktemp("mem_twins")
    for preset, folder in TWINS.values():
        write_tiny_model(preset, base / "diffsynth-tiny" / folder)
    return base


def twin(preset: str, **model_overrides):
    data = preset_params(REPO / "presets" / "tiny" / f"{preset}.yaml")
    data["model"].update(model_overrides)
    config = config_from_dict(data)
    spec = get_spec(config.model.family)
    torch.manual_seed(0)
    pipe = spec.load_pipeline(config, torch.float32)
    module = TrainingModule(pipe, FlowMatchSchedule.for_family(spec.name), torch.Generator())
    configure_trainable(module, config, torch.float32)
    return module, config


def items_for(preset: str):
    from PIL import Image
    g = torch.Generator().manual_seed(3)

    def img(size=32):
        return Image.fromarray(torch.randint(0, 255, (size, size, 3), generator=g, dtype=torch.uint8).numpy())
    if preset.startswith("wan"):
        return [{"video": [img() for _ in range(5)], "prompt": "a moving red square"}]
    return [{"image": img(64), "prompt": "a red circle on a white background"}]


def train_steps(module, items, steps, memory=None, lr=2e-3, fixed_draw=True, optimizer_cls=torch.optim.AdamW):
    """``steps`` AdamW steps on ``items``; with ``fixed_draw`` each step draws the same timestep and noise, so
    the loss falls as LoRA fits that one draw."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = optimizer_cls(params, lr=lr)
    losses = []
    module.generator.manual_seed(0)
    for _ in range(steps):
        if fixed_draw:
            module.generator.manual_seed(0)
        loss = module(items)
        loss.backward()
        if memory is not None:
            memory.after_backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, opt


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bitsandbytes_nf4", "torchao_int8_w8a16"])
@pytest.mark.parametrize("preset", sorted(TWINS))
def test_quantized_base_lora_trains_on_each_family_twin(preset, method, twins, monkeypatch):
    needs(method)
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(twins))
    module, config = twin(preset)
    dit_entry = module.pipe.component_sources["dit"]
    config.model.quant_options = f"{dit_entry}:{method}"
    items = items_for(preset)
    with torch.no_grad():
        cached = [{"cached_inputs": module.encode(item)} for item in items]
    memory = apply_memory_modes(module, config, torch.float32, cpu_accelerator())
    dit = module.pipe.dit
    quantized = [n for n, m in dit.named_modules() if Q.is_quantized(m)]
    linears = [n for n, m in dit.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]
    keep = getattr(dit, "_keep_in_fp32_modules", None) or []  # diffusers' full-precision modules (Wan)
    assert memory.quantized["dit"] == len(quantized) > 0
    assert all(any(f".{k}." in f".{n}." for k in keep) for n in linears), linears  # every other frozen Linear
    assert any(n.endswith(".base_layer") for n in quantized)  # LoRA sits on quantized layers
    losses, _ = train_steps(module, cached, 6)
    print(preset, method, [round(v, 5) for v in losses])
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_quant_refusals_by_name(twins, monkeypatch):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(twins))
    module, config = twin("qwen-image-lora")
    entry = module.pipe.component_sources["dit"]
    for quant, fp8, trainable, match in [
        ("nowhere:bitsandbytes_nf4", None, None, "'nowhere' is not a model entry"),
        (f"{entry}:torchao_int8_w8a16", entry, None, "both name"),
        ("dit:torchao_int8_w8a16", None, "dit", "trains fully"),
    ]:
        c = copy.deepcopy(config)
        c.model.quant_options, c.model.fp8_models, c.train.trainable_models = quant, fp8, trainable
        with pytest.raises(ConfigError, match=match):
            apply_memory_modes(module, c, torch.float32, cpu_accelerator())
    c = copy.deepcopy(config)
    c.train.enable_model_cpu_offload = True
    with pytest.raises(ConfigError, match="enable_model_cpu_offload trains on one process"):
        apply_memory_modes(module, c, torch.float32, SimpleNamespace(**{**vars(cpu_accelerator()), "num_processes": 2}))


# ------------------------------------------------------------------------------- offload: bit for bit

class _Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a, self.b = torch.nn.Linear(width, width), torch.nn.Linear(width, width)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(1024), _Block(8)])  # 2.1M and 144 parameters
        self.head = torch.nn.Linear(8, 8)

    def forward(self, x):
        return x


def test_units_follow_diffsynths_split_rule():
    net = _Net()
    big, small = net.blocks
    assert find_units(net) == [big.a, big.b, small.a, small.b, net.head]  # no threshold: every leaf with params
    # threshold in 2**20 parameters: above it a module is split; a ModuleList (no forward) is always split
    assert find_units(net, 1) == [big.a, big.b, small, net.head]
    assert find_units(net, 3) == [net]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer_offload,checkpointing", [(False, False), (True, True)])
def test_model_and_optimizer_offload_train_bit_identical_to_resident(optimizer_offload, checkpointing, twins,
                                                                     monkeypatch):
    """Online encoding (text encoder, VAE) and the DiT all run through the hooks; two steps with fresh noise."""
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(twins))
    runs = {}
    for offload in (False, True):
        module, config = twin("qwen-image-lora")
        if checkpointing:
            module.pipe.dit.enable_gradient_checkpointing()
        config.train.enable_model_cpu_offload = offload
        config.train.enable_optimizer_cpu_offload = optimizer_offload
        acc = cpu_accelerator()
        memory = apply_memory_modes(module, config, torch.float32, acc)
        if offload:
            assert acc.device_placement is False and len(memory.managers) == 1
            q = module.pipe.dit.transformer_blocks[0].attn.to_q.base_layer
            assert q.weight.numel() == 0  # between uses a frozen weight is an empty placeholder on the device
        losses, opt = train_steps(module, items_for("qwen-image-lora"), 2, memory, fixed_draw=False)
        if offload:
            assert q.weight.numel() == 0
            assert all(v.device.type == "cpu" for s in opt.state.values() for v in s.values()
                       if isinstance(v, torch.Tensor))
            memory.managers[0].remove()  # weights back: the same state dict as resident
        runs[offload] = (losses, {k: v.detach().clone() for k, v in module.state_dict().items()})
    assert runs[True][0] == runs[False][0]
    assert runs[True][1].keys() == runs[False][1].keys()
    for key, value in runs[False][1].items():
        assert torch.equal(runs[True][1][key], value), key


@pytest.mark.slow
def test_split_threshold_units_train_bit_identical(twins, monkeypatch):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(twins))
    results = []
    for threshold in (None, 0):  # 0: every module with a forward of its own and parameters is split to leaves
        module, config = twin("qwen-image-lora")
        manager = OffloadManager(module.pipe.dit, "cpu", True, threshold)
        memory = SimpleNamespace(after_backward=manager.after_backward)
        with torch.no_grad():
            cached = [{"cached_inputs": module.encode(i)} for i in items_for("qwen-image-lora")]
        results.append(train_steps(module, cached, 2, memory)[0])
    assert results[0] == results[1]


@pytest.mark.slow
def test_offload_models_holds_frozen_models_on_the_host_and_refuses_trained_ones(twins, monkeypatch):
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(twins))
    module, config = twin("qwen-image-lora")
    sources = module.pipe.component_sources
    items = items_for("qwen-image-lora")
    with torch.no_grad():
        before = module.encode(items[0])
    config.model.offload_models = f"{sources['text_encoder']},{sources['vae']}"
    memory = apply_memory_modes(module, config, torch.float32, cpu_accelerator())
    assert len(memory.managers) == 2
    assert all(p.numel() == 0 for p in module.pipe.text_encoder.parameters())  # offloaded between uses
    with torch.no_grad():
        after = module.encode(items[0])
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before
                                                  if isinstance(before[k], torch.Tensor))
    c = copy.deepcopy(config)
    c.model.offload_models = sources["dit"]
    with pytest.raises(ConfigError, match="offload_models names 'dit', which this run trains"):
        apply_memory_modes(module, c, torch.float32, cpu_accelerator())
    # an entry of the run that this stage does not hold (split training) is accepted
    module2, config2 = twin("qwen-image-lora")
    module2.pipe.text_encoder = None
    config2.model.offload_models = sources["text_encoder"]
    assert apply_memory_modes(module2, config2, torch.float32, cpu_accelerator()).managers == []


# ------------------------------------------------------------------------------- DiffSynth's recipe as written

@pytest.mark.slow
def test_diffsynth_qwen_image_2512_nf4_recipe_parses_and_trains(tmp_path, shapes_dataset, monkeypatch):
    needs("bitsandbytes_nf4")
    from diffsynth.training.loop import run_training
    write_tiny_model("qwen-image", tmp_path / "models" / "Qwen" / "Qwen-Image")
    (tmp_path / "models" / "Qwen" / "Qwen-Image-2512").symlink_to(tmp_path / "models" / "Qwen" / "Qwen-Image")
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(tmp_path / "models"))
    argv = shlex.split(QWEN_2512_NF4_SH.replace("\\\n", " ").format(
        data=shapes_dataset.parent, metadata=shapes_dataset, out=tmp_path / "out"))
    config = config_from_args(argv)
    assert config.model.quant_options.endswith(":bitsandbytes_nf4/" + ",".join(NF4_EXCLUDES))
    # keep the test short: two steps, no sample images, one validation row
    config.train.max_steps, config.dataset.dataset_num_workers = 2, 0
    config.sample.prompts, config.validation.num_samples = [], 1
    config.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_training(config)
    assert result.steps == 2 and all(math.isfinite(v) for _, v in result.loss_history)


# ------------------------------------------------------------------------------- a real-width block

@pytest.mark.slow
def test_quantized_lora_loss_curve_stays_close_to_full_precision_on_a_real_width_block():
    """One Qwen-Image transformer block at the real width (3072 hidden, 24 heads of 128, 12288 MLP) from diffusers
    with random weights stored in bf16, LoRA rank 16 on the real targets, four AdamW steps on one fixed input.

    Tolerance, from the quantization error itself: at step 0 LoRA B is zero, so the outputs differ only by the
    quantization error e = f_q - f, and for L = mean((f - y)^2) Cauchy-Schwarz gives
    |L_q - L| <= 2 sqrt(L) rms(e) + rms(e)^2 =: B0 (measured in this run, not recorded). The frozen base and so e
    stay fixed while LoRA trains; the LoRA updates differ only through gradients that pass the quantized weights,
    so over a handful of steps the gap stays within 2 B0 (factor 2: margin for the two LoRA trajectories).
    Computed in float32: this CPU has no fast bf16 matmul (a bf16 step of this block takes minutes here)."""
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope, QwenImageTransformerBlock
    from peft import LoraConfig, inject_adapter_in_model
    needs("bitsandbytes_nf4")
    needs("torchao_int8_w8a16")
    torch.manual_seed(0)
    block = QwenImageTransformerBlock(dim=3072, num_attention_heads=24, attention_head_dim=128)
    state = {k: v.to(torch.bfloat16).float() for k, v in block.state_dict().items()}  # bf16-stored weights
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(1, 16, 3072, generator=g), torch.randn(1, 8, 3072, generator=g)
    temb, target = torch.randn(1, 3072, generator=g), torch.randn(1, 16, 3072, generator=g)
    rope = QwenEmbedRope(theta=10000, axes_dim=[16, 56, 56], scale_rope=True)(
        [(1, 4, 4)], device=torch.device("cpu"), max_txt_seq_len=8)
    targets = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
               "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1"]
    curves, outputs = {}, {}
    for method in (None, "bitsandbytes_nf4", "torchao_int8_w8a16"):
        block.load_state_dict(state)
        model = copy.deepcopy(block).requires_grad_(False)
        torch.manual_seed(2)  # the same LoRA A init in every run
        inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=targets), model)
        if method:
            assert len(Q.quantize_model(model, Q.QuantSpec(method))) == 14  # 12 LoRA bases + 2 MLP up-projections
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=1e-3)
        losses = []
        for step in range(4):
            _, out = model(img, txt, None, temb, rope)
            if step == 0:
                outputs[method] = out.detach()
            loss = (out - target).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        curves[method] = losses
        del model, opt
    reference = curves[None]
    assert reference[-1] < reference[0], reference
    for method in ("bitsandbytes_nf4", "torchao_int8_w8a16"):
        err = (outputs[method] - outputs[None]).pow(2).mean().sqrt().item()
        rel = err / outputs[None].pow(2).mean().sqrt().item()
        bound = 2 * math.sqrt(reference[0]) * err + err ** 2
        gaps = [abs(a - b) for a, b in zip(curves[method], reference)]
        print(f"{method}: output rel. error {rel:.4f}, B0 {bound:.3e}, loss gaps {[f'{x:.2e}' for x in gaps]}, "
              f"curve {[round(v, 5) for v in curves[method]]} vs {[round(v, 5) for v in reference]}")
        assert 0 < rel < (0.2 if "nf4" in method else 0.02)  # it quantized, with the method's usual error
        assert gaps[0] <= bound
        assert max(gaps) <= 2 * bound
        assert curves[method][-1] < curves[method][0]


@pytest.mark.parametrize("in_features,out_features", [(32, 48), (128, 64)])
def test_nf4_layer_runs_without_grad_in_eval_mode(in_features, out_features):
    """Validation and samples run the quantized model in eval mode without autograd: bitsandbytes' CPU repacking path
    (AVX512-BF16 CPUs) must not meet a layer narrower than its blocks (the tiny twins' are)."""
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, out_features, dtype=torch.bfloat16)
    q = Q.quantized_linear(linear, "bitsandbytes_nf4", "cpu").eval()
    x = torch.randn(3, in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        y = q(x)
    assert y.shape == (3, out_features)
    relative = ((y.float() - linear(x).float()).norm() / linear(x).float().norm()).item()
    assert relative < 0.2  # nf4 keeps ~4 bits of each weight
