"""``make parity``: our code against DiffSynth-Studio's own code on identical random weights, one table.

Runs ours.py with this project's Python and reference.py with the parity venv's (DiffSynth-Studio, which also
imports as ``diffsynth``: the two never share a process); they exchange tensors as safetensors files in a
temporary folder. Exits non-zero when any compared quantity is outside its tolerance or a LoRA key is not consumed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from cases import ANIMATE2_CASES, ANIMATE_CASES, CONDITIONING_CASES, DISTILL_STEPS, DIT_CASES, PROMPT_FLUX2, VACE_CASES, VAE_CASES  # noqa: E402

# Qwen-Image's MLP: DiffSynth uses x*sigmoid(1.702x), diffusers (and the official model) tanh-GELU. The gap grows
# with the activations' size (~1.5e-4 relative measured on a realistic block, ~2e-3 on these random weights); the
# "(tanh-GELU)" rows rerun DiffSynth's side with tanh-GELU and show that nothing else differs.
TOLERANCE = {"qwen_image": 5e-3}
DEFAULT_TOLERANCE = 1e-4


def run(python: str, script: str, *args: str, **extra_env: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) if script.startswith("ours") else "", **extra_env)
    done = subprocess.run([python, str(HERE / script), *args], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{script} {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


def error(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double(), b.double()
    diff = (a - b).abs().max().item()
    return diff, diff / max(b.abs().max().item(), 1e-30)


class Table:
    def __init__(self):
        self.rows, self.failed = [], []

    def add(self, case: str, what: str, ours: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
        abs_err, rel_err = error(ours, ref)
        ok = rel_err <= tol
        self.rows.append((case, what, f"{abs_err:.3e}", f"{rel_err:.3e}", f"{tol:.0e}", "ok" if ok else "FAIL"))
        if not ok:
            self.failed.append(f"{case} {what}")

    def count(self, case: str, what: str, found: int, total: int) -> None:
        ok = found == total and total > 0
        self.rows.append((case, what, f"{found}/{total}", "", "all", "ok" if ok else "FAIL"))
        if not ok:
            self.failed.append(f"{case} {what}")

    def print(self) -> None:
        head = ("case", "quantity", "max abs err", "max rel err", "tol", "")
        widths = [max(len(str(r[i])) for r in [head, *self.rows]) for i in range(6)]
        for row in [head, tuple("-" * w for w in widths), *self.rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def dit_case(name: str, ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    run(ours_py, "ours.py", "dit", name, str(folder))
    run(ref_py, "reference.py", "dit", name, str(folder))
    ours, ref = load_file(str(folder / "ours.safetensors")), load_file(str(folder / "reference.safetensors"))
    if DIT_CASES[name]["family"] == "qwen_image":
        # as shipped, then every row again with its GELU set to tanh-GELU (diffusers'): nothing else may differ
        tol = TOLERANCE["qwen_image"]
        table.add(name, "DiT prediction (its sigmoid GELU, as shipped)", ours["pred"], ref["pred"], tol)
        table.add(name, "training loss (its sigmoid GELU, as shipped)", ours["loss"], ref["loss"], tol)
        run(ref_py, "reference.py", "dit", name, str(folder), PARITY_TANH_GELU="1")
        ref = load_file(str(folder / "reference_tanh_gelu.safetensors"))
        (folder / "ds_ckpt_tanh_gelu.safetensors").replace(folder / "ds_ckpt.safetensors")
        name = f"{name} (tanh-GELU)"
    run(ours_py, "ours.py", "load", name.split()[0], str(folder))
    load = load_file(str(folder / "ours_load.safetensors"))
    tol = DEFAULT_TOLERANCE
    for key, what in (("camera_embedding", "conditioning: camera embedding (Plücker, 24 ch)"),
                      ("motion_embedding", "conditioning: motion controller output"),
                      ("control_change", "ControlNet's part of the prediction (less the plain DiT's)")):
        if key in ours:
            table.add(name, what, ours[key], ref[key], tol)
    table.add(name, "DiT prediction (training forward)", ours["pred"], ref["pred"], tol)
    table.add(name, "training loss (weighted MSE)", ours["loss"], ref["loss"], tol)
    if "distill_loss" in ours:
        table.add(name, f"direct_distill loss ({DISTILL_STEPS} student steps)", ours["distill_loss"], ref["distill_loss"],
                  tol)
    for label, title in (("our_ckpt", "our training ckpt"), ("our_export", "our `diffsynth` export")):
        found, total = (int(x) for x in ref[f"{label}_found"].tolist())
        loader = "GeneralLoRALoader" if label == "our_ckpt" else "pipe.load_lora"
        table.count(name, f"{title}: modules its {loader} fuses", found, total)
        table.add(name, f"{title}: output change", ref[f"pred_{label}"] - ref["pred"],
                  ours["pred_lora"] - ours["pred"], tol)
    table.count(name, f"DiffSynth-trained ckpt: modules we read (into {int(load['loaded_modules'].item())} of ours)",
                int(load["read_modules"].item()), int(ref["ds_modules"].item()))
    table.add(name, "DiffSynth-trained ckpt: prediction (lora_checkpoint)", load["pred_ds_lora"], ref["pred_ds_lora"], tol)
    table.add(name, "DiffSynth-trained ckpt: loss", load["loss_ds_lora"], ref["loss_ds_lora"], tol)


def lora_rows(table: Table, case: str, model: str, ours: dict, ref: dict) -> None:
    """Its loaders on our LoRA training checkpoint and our `diffsynth` export in pipe.<model>: modules fused, and
    the output change against ours (reference_vace.lora_results)."""
    for label, title in (("our_ckpt", "our training ckpt"), ("our_export", "our `diffsynth` export")):
        found, total = (int(x) for x in ref[f"{label}_found"].tolist())
        loader = "GeneralLoRALoader" if label == "our_ckpt" else f"pipe.load_lora(pipe.{model})"
        table.count(case, f"{title}: modules its {loader} fuses", found, total)
        table.add(case, f"{title}: output change", ref[f"pred_{label}"] - ref["pred"], ours["pred_lora"] - ours["pred"],
                  DEFAULT_TOLERANCE)


def trained_lora_rows(table: Table, case: str, load: dict, ref: dict) -> None:
    """Our lora_checkpoint on the LoRA checkpoint its trainer wrote: modules read, prediction, loss."""
    table.count(case, f"DiffSynth-trained ckpt: modules we read (into {int(load['loaded_modules'].item())} of ours)",
                int(load["read_modules"].item()), int(ref["ds_modules"].item()))
    table.add(case, "DiffSynth-trained ckpt: prediction (lora_checkpoint)", load["pred_ds_lora"], ref["pred_ds_lora"],
              DEFAULT_TOLERANCE)
    table.add(case, "DiffSynth-trained ckpt: loss", load["loss_ds_lora"], ref["loss_ds_lora"], DEFAULT_TOLERANCE)


def full_names_row(table: Table, case: str, cls: str, folder: Path) -> None:
    """A full fine-tune's checkpoint names: its model's tensors named and shaped as ours."""
    import json
    ours_names = json.loads((folder / "our_full_names.json").read_text())
    ref_names = json.loads((folder / "reference_full_names.json").read_text())
    same = sum(1 for k, v in ref_names.items() if ours_names.get(k) == v)
    table.count(case, f"full fine-tune: its {cls} tensors named and shaped as ours", same,
                max(len(ref_names), len(ours_names)))


def vace_case(name: str, ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    """Wan VACE: the conditioning its units build from the same clips, the DiT + VACE forward and loss on them,
    and DiffSynth's loaders on our LoRA on pipe.vace (ours_vace.py / reference_vace.py)."""
    import json
    run(ours_py, "ours_vace.py", "vace", name, str(folder))
    run(ref_py, "reference_vace.py", "vace", name, str(folder))
    run(ours_py, "ours_vace.py", "load", name, str(folder))
    ours, ref = load_file(str(folder / "ours.safetensors")), load_file(str(folder / "reference.safetensors"))
    load = load_file(str(folder / "ours_load.safetensors"))
    tol, case = DEFAULT_TOLERANCE, f"vace {name}"
    table.add(case, "target latents [reference frame, video] (encode)", ours["latents"], ref["latents"], tol)
    table.add(case, "vace_context (VAE of inactive/reactive video, mask, reference)", ours["vace_context"],
              ref["vace_context"], tol)
    table.add(case, "DiT + VACE prediction (training forward)", ours["pred"], ref["pred"], tol)
    table.add(case, "training loss (weighted MSE)", ours["loss"], ref["loss"], tol)
    lora_rows(table, case, "vace", ours, ref)
    full_names_row(table, case, "VaceWanModel", folder)
    compat = json.loads((folder / "our_export_compat.json").read_text())
    for fmt, record in compat["formats"].items():
        table.count(case, f"export {fmt}: modules matched on WanVACETransformer3DModel", record["matched_modules"],
                    record["matched_modules"] + record["unmatched_modules"])
    trained_lora_rows(table, case, load, ref)


def conditioning_case(name: str, ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    """Wan's Fun / first-last-frame conditioning tensors, each side's units on the same clips
    (ours_conditioning.py / reference_conditioning.py)."""
    run(ours_py, "ours_conditioning.py", name, str(folder))
    run(ref_py, "reference_conditioning.py", name, str(folder))
    ours, ref = load_file(str(folder / "ours.safetensors")), load_file(str(folder / "reference.safetensors"))
    titles = {"latents": "target latents (encode)", "y": "y (mask + image latents / control latents)",
              "reference_latents": "reference latents (reference_image)",
              "control_camera": "camera embedding (Plücker, pixel-unshuffled)"}
    missing = sorted(set(ours) ^ set(ref))
    if missing:
        table.rows.append((f"cond {name}", "quantities on one side only", ", ".join(missing), "", "", "FAIL"))
    for key, title in titles.items():
        if key in ours and key in ref:
            table.add(f"cond {name}", title, ours[key], ref[key], DEFAULT_TOLERANCE)


def vae_case(name: str, ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    run(ours_py, "ours.py", "vae", name, str(folder))
    run(ref_py, "reference.py", "vae", name, str(folder))
    ours, ref = load_file(str(folder / "ours_vae.safetensors")), load_file(str(folder / "reference_vae.safetensors"))
    if ours["latents"].shape != ref["latents"].shape:
        table.rows.append((f"vae {name}", "latent shape", str(tuple(ours["latents"].shape)),
                           str(tuple(ref["latents"].shape)), "", "FAIL"))
        table.failed.append(f"vae {name} shape")
        return
    table.add(f"vae {name}", "normalised latents (encode)", ours["latents"], ref["latents"], DEFAULT_TOLERANCE)


def prompt_case(ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    import json
    run(ours_py, "ours.py", "prompt", "qwen_image", str(folder))
    run(ref_py, "reference.py", "prompt", "qwen_image", str(folder))
    ours = json.loads((folder / "ours_prompt.json").read_text())
    ref = json.loads((folder / "reference_prompt.json").read_text())
    for key in ("text", "max_length"):
        same = ours[key] == ref[key]
        table.rows.append(("prompt qwen_image", f"tokenizer input: {key}", "identical" if same else "DIFFERENT", "",
                           "equal", "ok" if same else "FAIL"))
        if not same:
            table.failed.append(f"prompt {key}")


def prompt_flux2_case(name: str, ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    """The FLUX.2 prompt path (chat template, padding to 512, the three hidden layers) on a tiny twin's tokenizer
    and text encoder: our embedding and text ids against its prompt unit's."""
    run(ours_py, "ours.py", "prompt_flux2", name, str(folder))
    run(ref_py, "reference.py", "prompt_flux2", name, str(folder))
    ours = load_file(str(folder / f"ours_prompt_{name}.safetensors"))
    ref = load_file(str(folder / f"reference_prompt_{name}.safetensors"))
    for key, what in (("prompt_emb", "DiT text input (1, 512, 3·D)"), ("text_ids", "text position ids")):
        if ours[key].shape != ref[key].shape:
            table.rows.append((f"prompt flux2 {name}", what, str(tuple(ours[key].shape)), str(tuple(ref[key].shape)),
                               "", "FAIL"))
            table.failed.append(f"prompt flux2 {name} {key} shape")
        else:
            table.add(f"prompt flux2 {name}", what, ours[key], ref[key], DEFAULT_TOLERANCE)


def z_image_prompt_case(ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    """Text to the DiT's input: the same tokenizer and Qwen3 weights through both prompt paths (template, its
    512-token padding and mask, the second-to-last hidden state, pad tokens dropped)."""
    from cases import Z_IMAGE_PROMPTS
    run(ours_py, "ours.py", "prompt", "z_image", str(folder))
    run(ref_py, "reference.py", "prompt", "z_image", str(folder))
    ours = load_file(str(folder / "ours_prompt.safetensors"))
    ref = load_file(str(folder / "reference_prompt.safetensors"))
    for i in range(len(Z_IMAGE_PROMPTS)):
        if ours[f"emb{i}"].shape != ref[f"emb{i}"].shape:
            table.rows.append(("prompt z_image", f"prompt {i}: tokens kept", str(tuple(ours[f"emb{i}"].shape)),
                               str(tuple(ref[f"emb{i}"].shape)), "", "FAIL"))
            table.failed.append(f"prompt z_image {i} shape")
            continue
        table.add("prompt z_image", f"prompt {i}: embedding ({ours[f'emb{i}'].shape[0]} tokens)", ours[f"emb{i}"],
                  ref[f"emb{i}"], DEFAULT_TOLERANCE)

def animate_case(name: str, ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    """Wan2.2-Animate: the conditioning its units build from the same clips, the face motion tokens, the DiT +
    animate adapter forward and loss, DiffSynth's loaders on our LoRA on pipe.dit, and the adapter's tensor names
    (ours_animate.py / reference_animate.py)."""
    run(ours_py, "ours_animate.py", "animate", name, str(folder))
    run(ref_py, "reference_animate.py", "animate", name, str(folder))
    run(ours_py, "ours_animate.py", "load", name, str(folder))
    ours, ref = load_file(str(folder / "ours.safetensors")), load_file(str(folder / "reference.safetensors"))
    load = load_file(str(folder / "ours_load.safetensors"))
    tol, case = DEFAULT_TOLERANCE, f"animate {name}"
    table.add(case, "target latents (encode)", ours["latents"], ref["latents"], tol)
    table.add(case, "y (image condition of input_image = video[0])", ours["y"], ref["y"], tol)
    table.add(case, "pose_latents (pose clip cut to len(video)-4, VAE)", ours["pose_latents"], ref["pose_latents"], tol)
    table.add(case, "face_pixel_values (face clip cut to len(video)-4)", ours["face_pixel_values"],
              ref["face_pixel_values"], tol)
    table.add(case, "face motion tokens (motion + face encoders)", ours["motion_tokens"], ref["motion_tokens"], tol)
    table.add(case, "DiT + animate adapter prediction (training forward)", ours["pred"], ref["pred"], tol)
    table.add(case, "training loss (weighted MSE)", ours["loss"], ref["loss"], tol)
    lora_rows(table, case, "dit", ours, ref)
    full_names_row(table, case, "WanAnimateAdapter", folder)
    trained_lora_rows(table, case, load, ref)


def animate2_case(name: str, ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    """Wan2.2-Animate-2: the conditioning its units build from the same PNG inputs (through the same VAE and CLIP
    image tower), the two-stream DiT's training forward and loss (also with a 1-frame reference video), DiffSynth's
    loaders on our LoRA checkpoint and exports on pipe.dit, the full recipe's tensor names, and our lora_checkpoint
    on its trainer's LoRA (ours_animate2.py / reference_animate2.py)."""
    import json
    run(ours_py, "ours_animate2.py", "animate2", name, str(folder))
    run(ref_py, "reference_animate2.py", "animate2", name, str(folder))
    run(ours_py, "ours_animate2.py", "load", name, str(folder))
    ours, ref = load_file(str(folder / "ours.safetensors")), load_file(str(folder / "reference.safetensors"))
    load = load_file(str(folder / "ours_load.safetensors"))
    tol, case = DEFAULT_TOLERANCE, f"animate2 {name}"
    rows = (("latents", "latents", "target latents [reference image frame, video] (encode)"),
            ("y", "y", "y (mask 1 on the reference image frame + its latents, VAE of zeros)"),
            ("clip_feature", "clip_feature", "clip_feature (CLIP of the reference image)"),
            ("clip_reference", "clip_fea_ref", "clip_fea_ref (CLIP of the reference video's frame 0)"),
            ("reference_latents", "condition_latents", "condition_latents (reference video cut to len(video))"),
            ("reference_y", "condition_y", "condition_y (all-ones mask + reference latents, as the DiT gets it)"),
            ("pred", "pred", "DiT prediction (training forward: its forward_origin)"),
            ("loss", "loss", "training loss (weighted MSE, reference image frame included)"),
            ("short_reference_latents", "short_condition_latents", "1-frame reference video: condition_latents"),
            ("pred_short", "pred_short", "1-frame reference video: DiT prediction (a reference slot empty)"),
            ("loss_short", "loss_short", "1-frame reference video: training loss"))
    for key, ref_key, what in rows:
        if ours[key].shape != ref[ref_key].shape:
            table.rows.append((case, what, str(tuple(ours[key].shape)), str(tuple(ref[ref_key].shape)), "", "FAIL"))
            table.failed.append(f"{case} {key} shape")
        else:
            table.add(case, what, ours[key], ref[ref_key], tol)
    table.add(case, "2nd reference latent frame's part (prediction less the 1-frame reference's)",
              ours["pred"] - ours["pred_short"], ref["pred"] - ref["pred_short"], tol)
    lora_rows(table, case, "dit", ours, ref)
    found, total = (int(x) for x in ref["our_comfyui_found"].tolist())
    table.count(case, "our `comfyui` export: modules its pipe.load_lora(pipe.dit) fuses", found, total)
    table.add(case, "our `comfyui` export: output change", ref["pred_our_comfyui"] - ref["pred"],
              ours["pred_lora"] - ours["pred"], tol)
    compat = json.loads((folder / "our_export_compat.json").read_text())
    for fmt, record in compat["formats"].items():
        table.count(case, f"export {fmt}: modules matched by our export check", record["matched_modules"],
                    record["matched_modules"] + record["unmatched_modules"])
    full_names_row(table, case, "dit.blocks.N.block.self_attn.q,k,v", folder)
    trained_lora_rows(table, case, load, ref)


def edit_case(ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    """Qwen-Image-Edit's image inputs: the VAE input after the edit resize (float32, bfloat16 pipelines), what the
    text encoder receives from the VL processor (token ids, image grid, pixel_values) for the twin's and the real
    Qwen2.5-VL processor config, one edit image and a list of four; and the dataset resize (dynamic, fixed)."""
    import json
    from cases import EDIT_IMAGE_SIZES
    run(ours_py, "ours.py", "edit", "-", str(folder))
    run(ref_py, "reference.py", "edit", "-", str(folder))
    ours = load_file(str(folder / "ours_edit.safetensors"))
    ref = load_file(str(folder / "reference_edit.safetensors"))
    processor = json.loads((folder / "reference_edit.json").read_text())["image_processor"]
    missing = sorted(set(ours) ^ set(ref))
    if missing:
        table.rows.append(("edit", "quantities on one side only", ", ".join(missing), "", "", "FAIL"))
        table.failed.append("edit quantities")

    def add(what: str, key: str, tol: float) -> None:
        if ours[key].shape != ref[key].shape:
            table.rows.append(("edit", what, str(tuple(ours[key].shape)), str(tuple(ref[key].shape)), "", "FAIL"))
            table.failed.append(f"edit {key} shape")
        else:
            table.add("edit", what, ours[key], ref[key], tol)

    edits = {"single0": "edit image 0", "single3": "edit image 3", "multi": f"{len(EDIT_IMAGE_SIZES)} edit images"}
    for label, what in edits.items():
        n = len(EDIT_IMAGE_SIZES) if label == "multi" else 1
        for i in range(n):
            for dtype in ("float32", "bfloat16"):
                add(f"VAE input, {what} [{i}] ({dtype})", f"vae_{label}_{i}_{dtype}", DEFAULT_TOLERANCE)
    for name in ("twin", "real"):
        source = f"{name} config, its {processor[name]}"
        for label, what in edits.items():
            add(f"VL input_ids, {what} ({source})", f"{name}_{label}_input_ids", 0.0)
            add(f"VL image_grid_thw, {what} ({source})", f"{name}_{label}_image_grid_thw", 0.0)
            add(f"VL pixel_values, {what} ({source})", f"{name}_{label}_pixel_values", DEFAULT_TOLERANCE)
    for i in range(len(EDIT_IMAGE_SIZES)):
        add(f"data resize, image {i} (dynamic)", f"data_dynamic_{i}", 0.0)
        add(f"data resize, image {i} (fixed)", f"data_fixed_{i}", 0.0)


# --quant_options methods compared (comfy-kitchen is in neither venv by default). Both sides call the same
# bitsandbytes/torchao quantizers with DiffSynth's settings, so only the libraries' versions in the two venvs can
# differ: one bf16 rounding step of the output (2**-8 relative) with margin.
QUANT_METHODS = ("bitsandbytes_nf4", "bitsandbytes_fp4", "torchao_int8_w8a16", "torchao_fp8_w8a16",
                 "torchao_nvfp4_w4a16")
QUANT_TOLERANCE = 1e-2


def quant_case(method: str, ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    run(ours_py, "ours.py", "quant", method, str(folder))
    run(ref_py, "reference.py", "quant", method, str(folder))
    ours = load_file(str(folder / f"ours_quant_{method}.safetensors"))
    ref = load_file(str(folder / f"reference_quant_{method}.safetensors"))
    table.add(f"quant {method}", "quantized forward (2 Linear)", ours["out"], ref["out"], QUANT_TOLERANCE)
    table.add(f"quant {method}", "input gradient (to LoRA)", ours["grad"], ref["grad"], QUANT_TOLERANCE)


def trajectory_case(ours_py: str, ref_py: str, folder: Path, table: Table) -> None:
    """trajectory_imitation: the same random DiT, VAE and LPIPS weights and the same noise and prompts through our
    loss and DiffSynth's TrajectoryImitationLoss (its teacher a deepcopy of its pipeline)."""
    run(ours_py, "ours.py", "trajectory", "z_image", str(folder))
    run(ref_py, "reference.py", "trajectory", "z_image", str(folder))
    ours = load_file(str(folder / "ours_trajectory.safetensors"))
    ref = load_file(str(folder / "reference_trajectory.safetensors"))
    case, tol = "trajectory z_image", DEFAULT_TOLERANCE
    table.add(case, "teacher grid (50 steps, the 8 student timesteps put in)", ours["timesteps"], ref["timesteps"], tol)
    table.add(case, "teacher trajectory (51 latents, CFG 2)", ours["trajectory"], ref["trajectory"], tol)
    table.add(case, "trajectory loss (8 weighted secant MSEs)", ours["loss"], ref["loss"], tol)
    table.add(case, "LPIPS term (decoded student sample vs teacher's)", ours["lpips"], ref["lpips"], tol)
    table.add(case, "LPIPS of two random 64x64 images (its LPIPSModel)", ours["lpips_images"], ref["lpips_images"],
              tol)
    table.add(case, "total loss", ours["total"], ref["total"], tol)
    table.add(case, "gradient in the student DiT (all weights)", ours["grad"], ref["grad"], tol)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-python", default=str(REPO / ".venv-parity" / "bin" / "python"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    table = Table()
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        for name in DIT_CASES:
            if not args.only or name in args.only:
                (Path(tmp) / name).mkdir()
                dit_case(name, args.python, args.reference_python, Path(tmp) / name, table)
        for name in VACE_CASES:
            if not args.only or f"vace-{name}" in args.only or "vace" in args.only:
                (Path(tmp) / f"vace-{name}").mkdir()
                vace_case(name, args.python, args.reference_python, Path(tmp) / f"vace-{name}", table)
        for name in ANIMATE_CASES:
            if not args.only or f"animate-{name}" in args.only or "animate" in args.only:
                (Path(tmp) / f"animate-{name}").mkdir()
                animate_case(name, args.python, args.reference_python, Path(tmp) / f"animate-{name}", table)
        for name in ANIMATE2_CASES:
            if not args.only or f"animate2-{name}" in args.only or "animate2" in args.only:
                (Path(tmp) / f"animate2-{name}").mkdir()
                animate2_case(name, args.python, args.reference_python, Path(tmp) / f"animate2-{name}", table)
        for name in CONDITIONING_CASES:
            if not args.only or f"cond-{name}" in args.only or "conditioning" in args.only:
                (Path(tmp) / f"cond-{name}").mkdir()
                conditioning_case(name, args.python, args.reference_python, Path(tmp) / f"cond-{name}", table)
        for name in VAE_CASES:
            if not args.only or f"vae-{name}" in args.only:
                (Path(tmp) / f"vae-{name}").mkdir()
                vae_case(name, args.python, args.reference_python, Path(tmp) / f"vae-{name}", table)
        quant = Path(tmp) / "quant"
        quant.mkdir()
        for method in QUANT_METHODS:
            if not args.only or f"quant-{method}" in args.only or "quant" in args.only:
                quant_case(method, args.python, args.reference_python, quant, table)
        if not args.only or "prompt" in args.only:
            (Path(tmp) / "prompt").mkdir()
            prompt_case(args.python, args.reference_python, Path(tmp) / "prompt", table)
        for name in PROMPT_FLUX2:
            if not args.only or f"prompt-flux2-{name}" in args.only or "prompt-flux2" in args.only:
                prompt_flux2_case(name, args.python, args.reference_python, Path(tmp), table)
        if not args.only or "edit" in args.only:
            (Path(tmp) / "edit").mkdir()
            edit_case(args.python, args.reference_python, Path(tmp) / "edit", table)
        if not args.only or "prompt" in args.only or "prompt-z_image" in args.only:
            (Path(tmp) / "prompt-z_image").mkdir()
            z_image_prompt_case(args.python, args.reference_python, Path(tmp) / "prompt-z_image", table)
        if not args.only or "trajectory" in args.only:
            (Path(tmp) / "trajectory").mkdir()
            trajectory_case(args.python, args.reference_python, Path(tmp) / "trajectory", table)
    table.print()
    if table.failed:
        sys.exit(f"parity FAILED: {table.failed}")
    print("parity: all quantities within tolerance")


if __name__ == "__main__":
    main()
