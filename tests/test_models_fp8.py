"""fp8 storage of frozen weights: stored as float8_e4m3fn, computed in bf16, LoRA still trains."""
from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model

from diffsynth.models.fp8 import FP8, enable_fp8, parameter_bytes


def tiny_dit():
    from diffusers import QwenImageTransformer2DModel
    torch.manual_seed(0)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                       attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                       axes_dims_rope=(4, 6, 6)).to(torch.bfloat16).requires_grad_(False)


def run(model):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 64, generator=g).to(torch.bfloat16)
    e = torch.randn(1, 5, 32, generator=g).to(torch.bfloat16)
    return model(hidden_states=x, encoder_hidden_states=e, encoder_hidden_states_mask=torch.ones(1, 5, dtype=torch.long),
                 timestep=torch.tensor([0.5], dtype=torch.bfloat16), img_shapes=[[(1, 4, 4)]], return_dict=False)[0]


def test_fp8_weights_outputs_close_and_lora_trains():
    model = tiny_dit()
    reference = run(model).float()
    bf16_bytes = parameter_bytes(model)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                       init_lora_weights="gaussian"), model)
    converted = enable_fp8(model)
    q = model.transformer_blocks[0].attn.to_q
    assert converted > 0 and q.base_layer.weight.dtype == FP8
    assert q.lora_A.default.weight.dtype == torch.bfloat16 and q.lora_A.default.weight.requires_grad
    assert model.img_in.weight.dtype == FP8 and model.txt_norm.weight.dtype == torch.bfloat16
    out = run(model).float()
    rel = ((out - reference).norm() / reference.norm()).item()
    print(f"fp8 vs bf16 relative error: {rel:.4f}; parameter bytes bf16 {bf16_bytes} -> fp8 {parameter_bytes(model)}")
    assert rel < 0.08
    out.pow(2).mean().backward()
    assert q.lora_B.default.weight.grad is not None and q.lora_B.default.weight.grad.abs().sum() > 0
    assert q.base_layer.weight.grad is None


def test_lora_injected_after_fp8_is_put_back_in_compute_dtype():
    model = tiny_dit()
    enable_fp8(model)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["to_q"]), model)  # peft copies the base dtype: fp8
    assert model.transformer_blocks[0].attn.to_q.lora_A.default.weight.dtype == FP8
    enable_fp8(model)
    lora = model.transformer_blocks[0].attn.to_q.lora_A.default.weight
    assert lora.dtype == torch.bfloat16 and lora.requires_grad
    run(model).float().pow(2).mean().backward()
    assert model.transformer_blocks[0].attn.to_q.lora_B.default.weight.grad is not None


def test_fp8_conv_layers_and_trainable_layers_left_alone():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(2, 2))
    conv[1].requires_grad_(True)
    conv[0].requires_grad_(False)
    x = torch.randn(1, 3, 4, 4)
    ref = conv[0](x)
    enable_fp8(conv)
    assert conv[0].weight.dtype == FP8 and conv[1].weight.dtype == torch.float32
    assert ((conv[0](x).float() - ref).norm() / ref.norm()) < 0.08
