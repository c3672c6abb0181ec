"""Wan2.2-Animate-14B and Wan2.2-Animate-2-14B (+ Distilled): refused by name, with what they lack here.

DiffSynth trains them through units and models this family does not have yet; a run naming their inputs fails at
the config check with the messages below (``Family.refused_inputs``), instead of a generic "unknown input".
"""
from __future__ import annotations

ANIMATE = ("Wan2.2-Animate-14B (--extra_inputs input_image,animate_pose_video,animate_face_video) is not implemented "
           "here: it needs DiffSynth's animate_adapter model (pose patch embedding, the face motion encoder and face "
           "encoder, face-adapter cross-attention after every 5th DiT block: WanAnimateAdapter) in DiffSynth's names, "
           "a checkpoint kind splitting the Animate DiT file into dit and animate_adapter, and its units (pose clip "
           "cut to len(video)-4 frames and VAE-encoded, 512x512 face clip as pixels); train it with DiffSynth-Studio.")
ANIMATE_2 = ("Wan2.2-Animate-2-14B (--extra_inputs animate2_prompt_ref,animate2_reference_image,"
             "animate2_reference_video) is not implemented here: it needs DiffSynth's WanAnimate2Transformer DiT "
             "(wan_animate_2/*.safetensors), its reference-prompt, CLIP, VAE and reference KV-cache units and the "
             "reference frame prepended to the target latents; train it with DiffSynth-Studio.")
REFUSED = {"animate_pose_video": ANIMATE, "animate_face_video": ANIMATE, "animate_inpaint_video": ANIMATE,
           "animate_mask_video": ANIMATE, "animate2_prompt_ref": ANIMATE_2, "animate2_reference_image": ANIMATE_2,
           "animate2_reference_video": ANIMATE_2}
