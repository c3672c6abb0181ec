"""Parameter memory of a frozen DiT in bf16 vs fp8 storage (diffsynth.models.fp8), measured side by side.

    .venv/bin/python benchmarks/fp8_memory.py
"""
from __future__ import annotations


import torch

from diffsynth.models.fp8 import enable_fp8, parameter_bytes


def wan_dit(layers: int, heads: int, ffn: int):
    from diffusers import WanTransformer3DModel
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128,
                                 in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn,
                                 num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=1024)


def tiny():
    from diffsynth.families.wan.tiny import tiny_dit
    return tiny_dit()


def main() -> None:
    torch.manual_seed(0)
    print(f"{'model':<34}{'params':>12}{'bf16 MB':>10}{'fp8 MB':>10}{'ratio':>8}{'rel.err':>9}")
    for name, make in (("tiny Wan DiT (preset)", tiny),
                       ("medium Wan DiT (4 layers of 1.3B)", lambda: wan_dit(4, 12, 8960))):
        model = make().to(torch.bfloat16).requires_grad_(False)
        n = sum(p.numel() for p in model.parameters())
        before = parameter_bytes(model)
        c = model.config
        x = torch.randn(1, c.in_channels, 1, 8, 8, dtype=torch.bfloat16)
        text = torch.randn(1, 8, c.text_dim, dtype=torch.bfloat16)
        t = torch.tensor([500.0])
        with torch.no_grad():
            ref = model(x, t, text, return_dict=False)[0].float()
            enable_fp8(model)
            out = model(x, t, text, return_dict=False)[0].float()
        after = parameter_bytes(model)
        rel = ((out - ref).norm() / ref.norm()).item()
        print(f"{name:<34}{n:>12,}{before / 2**20:>10.2f}{after / 2**20:>10.2f}{before / after:>8.2f}{rel:>9.4f}")
        del model


if __name__ == "__main__":
    main()
