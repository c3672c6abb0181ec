"""lora.adapter dora/loha/lokr: exports load in peft/diffusers with the trained update, map completely under
ComfyUI's key rules (re-implemented below from comfy/lora.py and comfy/weight_adapter/*.py) with the same merged
weights, DiffSynth's format is refused by name, and a tiny twin trains, checkpoints and continues with each."""
import logging

import pytest
import torch
from peft import set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from diffsynth.config import ConfigError
from diffsynth.export import ExportError, export_checkpoint, weight_shapes
from diffsynth.families import get_spec
from diffsynth.models.adapters import checkpoint_state, kind_of, write_adapter, adapter_modules
from diffsynth.training.lora import add_lora
from helpers import tiny_config
from test_export_formats import tiny_dit

KINDS = ["dora", "loha", "lokr"]
# modules each family's original checkpoint keeps whole (FLUX's q/k/v are fused there: tested separately)
TARGETS = {
    "qwen_image": ["to_q", "to_k", "add_v_proj", "to_out.0", "img_mlp.net.2"],
    "flux": ["to_out.0", "to_add_out", "ff.net.0.proj", "ff_context.net.2", "proj_out"],
    "wan": ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"],
}
RANK, ALPHA = 4, 8.0  # alpha != rank: the scale 2 must be folded into every written file


def trained(family, kind, seed=1):
    """A tiny DiT with the adapter injected as training does and every adapter tensor made non-zero."""
    model = tiny_dit(family)
    add_lora(model, TARGETS[family], RANK, alpha=ALPHA, adapter=kind, lokr_factor=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def merged_state(model):
    """The model's weights with its adapters merged by peft itself (the reference every export must reproduce)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items()
            if not any(s in k for s in (".lora_", ".hada_", ".lokr_"))}


def checkpoint_file(model, kind, path):
    """The training checkpoint as the Checkpointer writes it (remove_prefix_in_ckpt stripped the pipe.dit.)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    save_file(checkpoint_state(state, kind, ALPHA / RANK), str(path))
    return path


# ----------------------------------------------------------------- ComfyUI's loader, as comfy/lora.py reads a file
def comfy_key_map(original_state):
    """comfy/lora.py model_lora_keys_unet: every diffusion-model weight under its generic and kohya names."""
    out = {}
    for k in original_state:
        if k.endswith(".weight"):
            out[f"diffusion_model.{k[:-7]}"] = k
            out["lora_unet_" + k[:-7].replace(".", "_")] = k
    return out


def comfy_apply(lora, original_state):
    """comfy/lora.py load_lora + weight_adapter calculate_weight (strength 1): returns the patched weights and the
    keys no adapter consumed (ComfyUI logs those as 'lora key not loaded')."""
    weights = {k: v.clone().float() for k, v in original_state.items()}
    loaded = set()
    for x, target in comfy_key_map(original_state).items():
        get = lambda s: lora.get(f"{x}.{s}")  # noqa: E731
        alpha = get("alpha")
        alpha = None if alpha is None else alpha.item()
        dora = get("dora_scale")
        w = weights[target]
        diff = dim = None
        for up, down in (("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight")):
            if get(up) is not None:
                diff, dim = get(up).float() @ get(down).float(), get(down).shape[0]
                loaded |= {f"{x}.{up}", f"{x}.{down}"}
        if get("hada_w1_a") is not None:
            names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
            a1, b1, a2, b2 = (get(n).float() for n in names)
            diff, dim = (a1 @ b1) * (a2 @ b2), b1.shape[0]
            loaded |= {f"{x}.{n}" for n in names}
        if any(get(n) is not None for n in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a")):
            w1, w2 = get("lokr_w1"), get("lokr_w2")
            if w1 is None:
                dim, w1 = get("lokr_w1_b").shape[0], get("lokr_w1_a").float() @ get("lokr_w1_b").float()
            if w2 is None:
                dim, w2 = get("lokr_w2_b").shape[0], get("lokr_w2_a").float() @ get("lokr_w2_b").float()
            diff = torch.kron(w1.float(), w2.float()).reshape(w.shape)
            loaded |= {f"{x}.{n}" for n in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")
                       if get(n) is not None}
        if diff is None:
            continue
        scale = alpha / dim if alpha is not None and dim is not None else 1.0
        loaded |= {f"{x}.alpha", f"{x}.dora_scale"}
        if dora is not None:  # base.py weight_decompose, output axis: divides by the *base* weight's row norm
            calc = w + diff * scale
            norm = w.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps
            weights[target] = calc * (dora.float() / norm)
        else:
            weights[target] = w + diff * scale
    return weights, sorted(set(lora) - loaded)


def original(family, state):
    convert = get_spec(family).original_state_dict
    return convert(state) if convert else dict(state)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", list(TARGETS))
def test_exports_load_in_peft_and_map_completely_under_comfyui_rules(family, kind, tmp_path, caplog):
    model = trained(family, kind)
    ckpt = checkpoint_file(model, kind, tmp_path / "epoch-0.safetensors")
    base_state = {k: v.clone() for k, v in tiny_dit(family).state_dict().items()}
    expected = merged_state(model)
    result = export_checkpoint(ckpt, tmp_path / "export", ["diffusers", "comfyui", "kohya"], family,
                               base=tiny_dit(family), load_base=lambda: tiny_dit(family))
    assert result.ok and result.compat["adapter"] == kind, result.compat
    n_modules = len(adapter_modules(load_file(str(ckpt)), kind))
    assert all(r["matched_modules"] == n_modules for r in result.compat["formats"].values())

    # diffusers/peft: a fresh model with the same adapter at scale 1 loads every key and has the trained weights
    exported = load_file(str(result.files["diffusers"]))
    assert all(k.startswith("transformer.") for k in exported)
    fresh = tiny_dit(family)
    add_lora(fresh, TARGETS[family], RANK, alpha=RANK, adapter=kind, lokr_factor=4)
    loaded = set_peft_model_state_dict(fresh, {k[len("transformer."):]: v for k, v in exported.items()})
    assert not loaded.unexpected_keys
    assert not [k for k in loaded.missing_keys if any(s in k for s in (".lora_", ".hada_", ".lokr_"))]
    got = merged_state(fresh)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-5, msg=k)
    if kind == "dora":  # diffusers' own loader reads peft's DoRA names too
        pipe_model = tiny_dit(family)
        with caplog.at_level(logging.WARNING):
            pipe_model.load_lora_adapter(exported, prefix="transformer", adapter_name="t")
        assert "unexpected" not in caplog.text.lower(), caplog.text
        got = merged_state(pipe_model)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-5, msg=k)

    # ComfyUI / kohya names: every key consumed under ComfyUI's key rules, same merged weights in its layout
    want = original(family, expected)
    for fmt in ("comfyui", "kohya"):
        lora = load_file(str(result.files[fmt]))
        if kind in ("loha", "lokr"):
            assert any(f".{'hada_w1_a' if kind == 'loha' else 'lokr_w1'}" in k for k in lora)
        else:
            assert any(k.endswith(".dora_scale") for k in lora)
        patched, not_loaded = comfy_apply(lora, original(family, base_state))
        assert not not_loaded, not_loaded
        for k in want:
            torch.testing.assert_close(patched[k], want[k].float(), rtol=0, atol=1e-5, msg=f"{fmt} {k}")


def test_fused_flux_layers_are_refused_by_name_for_comfyui():
    model = tiny_dit("flux")
    add_lora(model, ["to_q", "to_k", "to_v"], RANK, adapter="loha")
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    modules = adapter_modules(checkpoint_state(state, "loha", 1.0), "loha")
    with pytest.raises(ExportError, match=r"attn.to_[qkv].*fused or reordered"):
        write_adapter(modules, "loha", "comfyui", get_spec("flux"), weight_shapes(tiny_dit("flux")))
    assert write_adapter(modules, "loha", "diffusers", get_spec("flux"), {})  # diffusers names carry it


@pytest.mark.parametrize("kind", KINDS)
def test_diffsynth_format_is_refused_by_name(kind, tmp_path, shapes_dataset):
    modules = adapter_modules(checkpoint_state(
        {n: p.detach() for n, p in trained("wan", kind).named_parameters() if p.requires_grad}, kind, 1.0), kind)
    with pytest.raises(ExportError, match=f"diffsynth cannot carry a {kind}"):
        write_adapter(modules, kind, "diffsynth", get_spec("wan"), {})
    with pytest.raises(ConfigError, match=f"diffsynth cannot carry a {kind}"):
        tiny_config(tmp_path, shapes_dataset, lora__adapter=kind, export__formats=["diffusers", "diffsynth"])


def test_loraplus_and_opensource_format_are_refused_for_loha(tmp_path, shapes_dataset):
    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        tiny_config(tmp_path, shapes_dataset, lora__adapter="loha", train__loraplus_lr_ratio=4.0)
    with pytest.raises(ConfigError, match="align_to_opensource_format"):
        tiny_config(tmp_path, shapes_dataset, lora__adapter="lokr", output__align_to_opensource_format=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_tiny_twin_trains_each_adapter_and_continues_from_its_checkpoint(kind, tmp_path, shapes_dataset, tiny_env):
    from diffsynth.training.loop import Trainer
    short = dict(train__num_epochs=1, train__max_steps=2, validation__num_samples=1, sample__prompts=[],
                 lora__adapter=kind, lora__lora_alpha=8.0)
    trainer = Trainer(tiny_config(tmp_path / "a", shapes_dataset, **short))
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    slot = {"dora": "lora_magnitude_vector", "loha": "hada_w1_a", "lokr": "lokr_w"}[kind]
    assert names and any(slot in n for n in names)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.run()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "the adapter did not train"
    ckpt = tmp_path / "a/out/epoch-0.safetensors"
    saved = load_file(str(ckpt))
    assert kind_of(saved) == kind and not any(".default" in k for k in saved)
    # lora_checkpoint puts the same update back (scale 8/32 folded on save, taken out on load)
    again = Trainer(tiny_config(tmp_path / "b", shapes_dataset, **short, lora__lora_checkpoint=str(ckpt)))
    resumed = dict(again.model.named_parameters())
    for n in before:
        torch.testing.assert_close(resumed[n].detach(), after[n].detach(), rtol=1e-6, atol=1e-7, msg=n)
