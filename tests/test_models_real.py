"""Every supported real checkpoint at full size, on the meta device (no memory, no download).

For each model the key/shape list of every layout it ships in is produced — the original layouts (BFL, Wan-AI)
by enumerators written here from the original model code, independent of the converters — and detection
must name the model and key matching against the module built from the detected config must be exact.
"""
from __future__ import annotations

import pytest
from accelerate import init_empty_weights

from diffsynth.families.qwen_image.checkpoints import vl_model_to_checkpoint
from diffsynth.models.components import detect_shapes, plan_shapes
from diffsynth.models.real_configs import REAL_MODELS, build_real


def meta_shapes(name: str) -> dict:
    with init_empty_weights():
        module = build_real(REAL_MODELS[name])
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ------------------------------------------------------------- original layouts, from the original model code

def bfl_flux_dit(c: dict) -> dict:
    inner, hd = c["num_attention_heads"] * c["attention_head_dim"], c["attention_head_dim"]
    mlp = inner * 4
    s = {}

    def lin(name, out, inp, bias=True):
        s[f"{name}.weight"] = (out, inp)
        if bias:
            s[f"{name}.bias"] = (out,)

    lin("img_in", inner, c["in_channels"])
    lin("txt_in", inner, c["joint_attention_dim"])
    for emb, inp in (("time_in", 256), ("vector_in", c["pooled_projection_dim"]), ("guidance_in", 256)):
        lin(f"{emb}.in_layer", inner, inp)
        lin(f"{emb}.out_layer", inner, inner)
    for i in range(c["num_layers"]):
        for side in ("img", "txt"):
            p = f"double_blocks.{i}.{side}"
            lin(f"{p}_mod.lin", 6 * inner, inner)
            lin(f"{p}_attn.qkv", 3 * inner, inner)
            s[f"{p}_attn.norm.query_norm.scale"] = (hd,)
            s[f"{p}_attn.norm.key_norm.scale"] = (hd,)
            lin(f"{p}_attn.proj", inner, inner)
            lin(f"{p}_mlp.0", mlp, inner)
            lin(f"{p}_mlp.2", inner, mlp)
    for i in range(c["num_single_layers"]):
        p = f"single_blocks.{i}"
        lin(f"{p}.linear1", 3 * inner + mlp, inner)
        lin(f"{p}.linear2", inner, inner + mlp)
        s[f"{p}.norm.query_norm.scale"] = (hd,)
        s[f"{p}.norm.key_norm.scale"] = (hd,)
        lin(f"{p}.modulation.lin", 3 * inner, inner)
    lin("final_layer.linear", c["in_channels"], inner)
    lin("final_layer.adaLN_modulation.1", 2 * inner, inner)
    return s


def bfl_ae(c: dict) -> dict:
    ch, z, n = c["block_out_channels"], c["latent_channels"], c["layers_per_block"]
    s = {}

    def conv(name, out, inp, k=3):
        s[f"{name}.weight"], s[f"{name}.bias"] = (out, inp, k, k), (out,)

    def norm(name, dim):
        s[f"{name}.weight"], s[f"{name}.bias"] = (dim,), (dim,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def mid(p, dim):
        resnet(f"{p}.mid.block_1", dim, dim)
        norm(f"{p}.mid.attn_1.norm", dim)
        for x in ("q", "k", "v", "proj_out"):
            conv(f"{p}.mid.attn_1.{x}", dim, dim, 1)
        resnet(f"{p}.mid.block_2", dim, dim)

    conv("encoder.conv_in", ch[0], 3)
    cin = ch[0]
    for i, cout in enumerate(ch):
        for j in range(n):
            resnet(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
        if i != len(ch) - 1:
            conv(f"encoder.down.{i}.downsample.conv", cout, cout)
    mid("encoder", ch[-1])
    norm("encoder.norm_out", ch[-1])
    conv("encoder.conv_out", 2 * z, ch[-1])
    conv("decoder.conv_in", ch[-1], z)
    mid("decoder", ch[-1])
    cin = ch[-1]
    for i in reversed(range(len(ch))):
        for j in range(n + 1):
            resnet(f"decoder.up.{i}.block.{j}", cin, ch[i])
            cin = ch[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", ch[i], ch[i])
    norm("decoder.norm_out", ch[0])
    conv("decoder.conv_out", 3, ch[0])
    return s


def wan_dit(c: dict) -> dict:
    dim = c["num_attention_heads"] * c["attention_head_dim"]
    pt, ph, pw = c["patch_size"]
    s = {"patch_embedding.weight": (dim, c["in_channels"], pt, ph, pw), "patch_embedding.bias": (dim,)}

    def lin(name, out, inp):
        s[f"{name}.weight"], s[f"{name}.bias"] = (out, inp), (out,)

    lin("text_embedding.0", dim, c["text_dim"])
    lin("text_embedding.2", dim, dim)
    lin("time_embedding.0", dim, c["freq_dim"])
    lin("time_embedding.2", dim, dim)
    lin("time_projection.1", 6 * dim, dim)
    for i in range(c["num_layers"]):
        p = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for x in "qkvo":
                lin(f"{p}.{attn}.{x}", dim, dim)
            s[f"{p}.{attn}.norm_q.weight"] = s[f"{p}.{attn}.norm_k.weight"] = (dim,)
        if c["image_dim"]:
            lin(f"{p}.cross_attn.k_img", dim, dim)
            lin(f"{p}.cross_attn.v_img", dim, dim)
            s[f"{p}.cross_attn.norm_k_img.weight"] = (dim,)
        s[f"{p}.norm3.weight"] = s[f"{p}.norm3.bias"] = (dim,)
        lin(f"{p}.ffn.0", c["ffn_dim"], dim)
        lin(f"{p}.ffn.2", dim, c["ffn_dim"])
        s[f"{p}.modulation"] = (1, 6, dim)
    lin("head.head", c["out_channels"] * pt * ph * pw, dim)
    s["head.modulation"] = (1, 2, dim)
    if c["image_dim"]:
        e = c["image_dim"]
        s["img_emb.proj.0.weight"] = s["img_emb.proj.0.bias"] = (e,)
        lin("img_emb.proj.1", e, e)
        lin("img_emb.proj.3", dim, e)
        s["img_emb.proj.4.weight"] = s["img_emb.proj.4.bias"] = (dim,)
        if c.get("pos_embed_seq_len"):  # FLF2V (DiffSynth's MLP(has_pos_emb=True)): positions of two images
            s["img_emb.emb_pos"] = (1, c["pos_embed_seq_len"], e)
    # Wan-Fun (DiffSynth's WanModel(has_ref_conv, add_control_adapter) and SimpleAdapter)
    if c.get("has_ref_conv"):
        s["ref_conv.weight"], s["ref_conv.bias"] = (dim, 16, ph, pw), (dim,)
    if c.get("control_adapter_in_dim"):
        s["control_adapter.conv.weight"] = (dim, c["control_adapter_in_dim"] * 64, ph, pw)
        s["control_adapter.conv.bias"] = (dim,)
        for conv in ("conv1", "conv2"):
            s[f"control_adapter.residual_blocks.0.{conv}.weight"] = (dim, dim, 3, 3)
            s[f"control_adapter.residual_blocks.0.{conv}.bias"] = (dim,)
    return s


def motion_controller(c: dict) -> dict:
    """DiffSynth's WanMotionControllerModel: linear = Sequential(Linear, SiLU, Linear, SiLU, Linear(dim, 6 dim))."""
    dim, f = c["dim"], c["freq_dim"]
    s = {}
    for i, (out, inp) in ((0, (dim, f)), (2, (dim, dim)), (4, (6 * dim, dim))):
        s[f"linear.{i}.weight"], s[f"linear.{i}.bias"] = (out, inp), (out,)
    return s


def wan_vae(c: dict) -> dict:
    """Wan2.1 ``WanVAE_`` (flat lists) or Wan2.2 (``Down_/Up_ResidualBlock``), as in Wan's vae.py / vae2_2.py."""
    residual = c.get("is_residual", False)
    dim, dec_dim, z, mult, nrb = c["base_dim"], c.get("decoder_base_dim") or c["base_dim"], c["z_dim"], c["dim_mult"], c["num_res_blocks"]
    io = c.get("in_channels", 3)
    s = {}

    def conv3(name, out, inp, k=(3, 3, 3)):
        s[f"{name}.weight"], s[f"{name}.bias"] = (out, inp, *k), (out,)

    def res(name, cin, cout):
        s[f"{name}.residual.0.gamma"] = (cin, 1, 1, 1)
        conv3(f"{name}.residual.2", cout, cin)
        s[f"{name}.residual.3.gamma"] = (cout, 1, 1, 1)
        conv3(f"{name}.residual.6", cout, cout)
        if cin != cout:
            conv3(f"{name}.shortcut", cout, cin, (1, 1, 1))

    def resample(name, d, mode):
        if mode.startswith("down"):
            s[f"{name}.resample.1.weight"], s[f"{name}.resample.1.bias"] = (d, d, 3, 3), (d,)
            if mode == "downsample3d":
                conv3(f"{name}.time_conv", d, d, (3, 1, 1))
        else:
            out = d if residual else d // 2
            s[f"{name}.resample.1.weight"], s[f"{name}.resample.1.bias"] = (out, d, 3, 3), (out,)
            if mode == "upsample3d":
                conv3(f"{name}.time_conv", d * 2, d, (3, 1, 1))

    def middle(p, d):
        res(f"{p}.middle.0", d, d)
        s[f"{p}.middle.1.norm.gamma"] = (d, 1, 1)
        s[f"{p}.middle.1.to_qkv.weight"], s[f"{p}.middle.1.to_qkv.bias"] = (3 * d, d, 1, 1), (3 * d,)
        s[f"{p}.middle.1.proj.weight"], s[f"{p}.middle.1.proj.bias"] = (d, d, 1, 1), (d,)
        res(f"{p}.middle.2", d, d)

    dims = [dim * u for u in [1] + mult]
    conv3("encoder.conv1", dims[0], io)
    k = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        down = i != len(mult) - 1
        mode = "downsample3d" if down and c["temperal_downsample"][i] else "downsample2d"
        if residual:
            for j in range(nrb):
                res(f"encoder.downsamples.{i}.downsamples.{j}", cin, cout)
                cin = cout
            if down:
                resample(f"encoder.downsamples.{i}.downsamples.{nrb}", cout, mode)
        else:
            for _ in range(nrb):
                res(f"encoder.downsamples.{k}", cin, cout)
                cin, k = cout, k + 1
            if down:
                resample(f"encoder.downsamples.{k}", cout, mode)
                k += 1
    middle("encoder", dims[-1])
    s["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv3("encoder.head.2", 2 * z, dims[-1])
    conv3("conv1", 2 * z, 2 * z, (1, 1, 1))
    conv3("conv2", z, z, (1, 1, 1))
    dims = [dec_dim * u for u in [mult[-1]] + mult[::-1]]
    up_t = c["temperal_downsample"][::-1]
    conv3("decoder.conv1", dims[0], z)
    middle("decoder", dims[0])
    k = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        up = i != len(mult) - 1
        mode = "upsample3d" if up and up_t[i] else "upsample2d"
        if residual:
            for j in range(nrb + 1):
                res(f"decoder.upsamples.{i}.upsamples.{j}", cin, cout)
                cin = cout
            if up:
                resample(f"decoder.upsamples.{i}.upsamples.{nrb + 1}", cout, mode)
        else:
            if i in (1, 2, 3):
                cin //= 2
            for _ in range(nrb + 1):
                res(f"decoder.upsamples.{k}", cin, cout)
                cin, k = cout, k + 1
            if up:
                resample(f"decoder.upsamples.{k}", cout, mode)
                k += 1
    s["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv3("decoder.head.2", io, dims[-1])
    return s


def wan_t5(c: dict) -> dict:
    d, f = c["d_model"], c["d_ff"]
    s = {"token_embedding.weight": (c["vocab_size"], d), "norm.weight": (d,)}
    for i in range(c["num_layers"]):
        p = f"blocks.{i}"
        s[f"{p}.norm1.weight"] = s[f"{p}.norm2.weight"] = (d,)
        for x in "qkvo":
            s[f"{p}.attn.{x}.weight"] = (d, d)
        s[f"{p}.ffn.gate.0.weight"] = s[f"{p}.ffn.fc1.weight"] = (f, d)
        s[f"{p}.ffn.fc2.weight"] = (d, f)
        s[f"{p}.pos_embedding.embedding.weight"] = (c["relative_attention_num_buckets"], c["num_heads"])
    return s


def wan_clip(c: dict) -> dict:
    d, f, patch = c["hidden_size"], c["intermediate_size"], c["patch_size"]
    n = (c["image_size"] // patch) ** 2 + 1
    s = {"log_scale": (), "visual.patch_embedding.weight": (d, 3, patch, patch), "visual.cls_embedding": (1, 1, d),
         "visual.pos_embedding": (1, n, d), "visual.head": (d, c["projection_dim"]),
         # a few of the XLM-RoBERTa text tower's keys, which the file also holds
         "textual.token_embedding.weight": (250002, 1024), "textual.blocks.0.attn.q.weight": (1024, 1024)}
    for x in ("pre_norm", "post_norm"):
        s[f"visual.{x}.weight"] = s[f"visual.{x}.bias"] = (d,)
    for i in range(c["num_hidden_layers"]):
        p = f"visual.transformer.{i}"
        for x in ("norm1", "norm2"):
            s[f"{p}.{x}.weight"] = s[f"{p}.{x}.bias"] = (d,)
        s[f"{p}.attn.to_qkv.weight"], s[f"{p}.attn.to_qkv.bias"] = (3 * d, d), (3 * d,)
        s[f"{p}.attn.proj.weight"], s[f"{p}.attn.proj.bias"] = (d, d), (d,)
        s[f"{p}.mlp.0.weight"], s[f"{p}.mlp.0.bias"] = (f, d), (f,)
        s[f"{p}.mlp.2.weight"], s[f"{p}.mlp.2.bias"] = (d, f), (d,)
    return s


def as_checkpoint(name: str, shapes: dict) -> dict:
    """The diffusers/transformers layout as the repositories store it."""
    if name == "qwen-image-text-encoder":
        return vl_model_to_checkpoint(shapes)
    if name == "flux.1-dev-clip":
        return {"text_model." + k: v for k, v in shapes.items()}
    if name in ("flux.1-dev-t5", "umt5-xxl"):
        return {k: v for k, v in shapes.items() if k != "encoder.embed_tokens.weight"}
    if name == "wan2.2-animate-2-14b-dit":  # loaded in its released names: diffusers' are the other layout
        from diffsynth.families.wan.animate2_model import state_dict_to_diffusers
        return state_dict_to_diffusers(shapes)
    return shapes


def wan_vace_dit(c: dict) -> dict:
    """The Wan-AI VACE file: the DiT plus vace_blocks.N (a DiT block, before_proj on block 0, after_proj) and
    vace_patch_embedding, in the original names."""
    s = wan_dit(c)
    dim = c["num_attention_heads"] * c["attention_head_dim"]
    block = {k[len("blocks.0."):]: v for k, v in wan_dit({**c, "num_layers": 1}).items() if k.startswith("blocks.0.")}
    for n in range(len(c["vace_layers"])):
        s.update({f"vace_blocks.{n}.{k}": v for k, v in block.items()})
        for proj in ("before_proj", "after_proj") if n == 0 else ("after_proj",):
            s[f"vace_blocks.{n}.{proj}.weight"], s[f"vace_blocks.{n}.{proj}.bias"] = (dim, dim), (dim,)
    s["vace_patch_embedding.weight"] = (dim, c["vace_in_channels"], *c["patch_size"])
    s["vace_patch_embedding.bias"] = (dim,)
    return s


def wan_animate_dit(c: dict) -> dict:
    """The Wan-AI Animate file: the image-to-video DiT plus the adapter's keys (pose_patch_embedding, motion_encoder,
    face_encoder, face_adapter), unprefixed as released."""
    from accelerate import init_empty_weights

    from diffsynth.families.wan.animate_model import WanAnimateAdapter
    with init_empty_weights():
        adapter = WanAnimateAdapter(**c["animate_adapter"])
    return {**wan_dit(c), **{k: tuple(v.shape) for k, v in adapter.state_dict().items()}}


ORIGINAL = {"flux.1-dev-dit": ("bfl", bfl_flux_dit), "flux.1-dev-vae": ("bfl", bfl_ae),
            "wan2.1-t2v-1.3b-dit": ("wan", wan_dit), "wan2.1-t2v-14b-dit": ("wan", wan_dit),
            "wan2.1-i2v-14b-dit": ("wan", wan_dit), "wan2.2-ti2v-5b-dit": ("wan", wan_dit),
            "wan2.2-t2v-a14b-dit": ("wan", wan_dit), "wan2.1-vae": ("wan", wan_vae), "wan2.2-vae": ("wan", wan_vae),
            "umt5-xxl": ("wan", wan_t5), "wan2.1-clip": ("wan", wan_clip),
            "wan2.1-vace-1.3b-dit": ("wan", wan_vace_dit), "wan2.1-vace-14b-dit": ("wan", wan_vace_dit),
            "wan2.1-speedcontrol-motion-controller": ("diffsynth", motion_controller),
            "wan2.2-animate-14b-dit": ("wan", wan_animate_dit),
            "wan2.2-animate-2-14b-dit": ("wan", lambda c: meta_shapes("wan2.2-animate-2-14b-dit")),
            **{n: ("wan", wan_dit) for n in REAL_MODELS if n.startswith(("wan2.1-flf2v", "wan2.1-fun", "wan2.2-fun"))}}
# released only in original names (Wan-AI .pth / DiffSynth's converted safetensors) or only in HF names
ONLY_ORIGINAL = {"wan2.1-vae", "wan2.2-vae", "umt5-xxl", "wan2.1-clip", "wan2.1-speedcontrol-motion-controller"}

CASES = [(n, "diffusers") for n in REAL_MODELS if n not in ONLY_ORIGINAL] + [(n, ORIGINAL[n][0]) for n in ORIGINAL]


@pytest.mark.parametrize("name,layout", CASES, ids=[f"{n}[{l}]" for n, l in CASES])
def test_real_model_detected_and_keys_match(name, layout):
    entry = REAL_MODELS[name]
    if layout == "diffusers":
        shapes = as_checkpoint(name, meta_shapes(name))
    else:
        shapes = ORIGINAL[name][1](entry["config"])
    detected, module, (missing, unexpected, mismatched) = plan_shapes(shapes, entry["family"])
    print(f"{name} [{layout}]: {len(shapes)} tensors -> {detected.kind.name}, {detected.variant}, "
          f"{sum(p.numel() for p in module.parameters()) / 1e9:.2f}B params")
    assert detected.component == entry["component"]
    assert name in detected.variant.split(" = ")
    assert detected.kind.layout in ({"diffusers", "transformers"} if layout == "diffusers" else {layout})
    assert (missing, unexpected, mismatched) == ([], [], [])
    assert all(p.device.type == "meta" for p in module.parameters())


def test_qwen_vae_and_wan21_vae_are_told_apart_by_family_and_config():
    shapes = meta_shapes("qwen-image-vae")
    assert detect_shapes(shapes, "qwen_image").variant == "qwen-image-vae"
    assert detect_shapes(shapes, "wan").variant == "wan2.1-vae"
    assert detect_shapes(shapes, None, {"_class_name": "AutoencoderKLQwenImage", **REAL_MODELS["qwen-image-vae"]["config"]}).family == "qwen_image"
    # the Wan2.2 VAE (48 channels) is never taken for a Qwen-Image VAE
    with pytest.raises(ValueError, match="Wan2.2 VAE"):
        detect_shapes(meta_shapes("wan2.2-vae"), "qwen_image")


def test_flux_vae_is_not_taken_for_a_wan_vae_and_families_do_not_mix():
    ae = bfl_ae(REAL_MODELS["flux.1-dev-vae"]["config"])
    assert detect_shapes(ae, "flux").kind.name == "flux_vae_bfl"
    with pytest.raises(ValueError, match="not part of a wan model"):
        detect_shapes(ae, "wan")
    with pytest.raises(ValueError, match="not part of a flux model"):
        detect_shapes(meta_shapes("wan2.1-t2v-1.3b-dit"), "flux")
    assert detect_shapes(meta_shapes("flux.1-dev-t5"), "flux").kind.name == "t5_encoder"
    assert detect_shapes(meta_shapes("umt5-xxl"), "wan").kind.name == "umt5"


def test_dit_configs_are_inferred_from_shapes_alone():
    for name in ("qwen-image-dit", "flux.1-dev-dit", "wan2.1-t2v-14b-dit", "wan2.1-i2v-14b-dit", "wan2.2-ti2v-5b-dit"):
        d = detect_shapes(meta_shapes(name), REAL_MODELS[name]["family"], beside=None)
        real = REAL_MODELS[name]["config"]
        for key in ("num_layers", "in_channels", "num_attention_heads", "attention_head_dim"):
            assert d.config[key] == real[key], (name, key)


def test_wan_releases_that_differ_in_one_addition_are_told_apart():
    """FLF2V's image positions, Fun's reference convolution and camera adapter: a DiT with or without one of them
    is named alone, never as the release of the same size without (or with) it."""
    names = [n for n in REAL_MODELS if n.startswith(("wan2.1-flf2v", "wan2.1-fun", "wan2.2-fun"))]
    assert len(names) == 10
    for name in [*names, "wan2.1-i2v-14b-dit", "wan2.2-i2v-a14b-dit"]:
        assert detect_shapes(meta_shapes(name), "wan").variant == name
        assert detect_shapes(wan_dit(REAL_MODELS[name]["config"]), "wan").variant == name

