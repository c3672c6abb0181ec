"""Wan inputs refused by name, with what they lack here (``Family.refused_inputs``): a run naming them fails at the
config check with these messages instead of a generic "unknown input"."""
from __future__ import annotations

ANIMATE_ALONE = ("animate_face_video trains Wan2.2-Animate-14B together with the pose clip: set --extra_inputs "
                 "input_image,animate_pose_video,animate_face_video (DiffSynth's recipe); animate_pose_video selects "
                 "the Animate pipeline")
ANIMATE_REPLACE = ("Wan2.2-Animate's replacement mode (animate_inpaint_video, animate_mask_video: DiffSynth's "
                   "WanVideoUnit_AnimateInpaint, a background clip and a mask clip as the image condition) is not "
                   "implemented here, and no DiffSynth training recipe uses it: train the animation mode "
                   "(input_image,animate_pose_video,animate_face_video), or use DiffSynth-Studio")
ANIMATE_2 = ("Wan2.2-Animate-2-14B trains with its three inputs together: set --extra_inputs animate2_prompt_ref,"
             "animate2_reference_image,animate2_reference_video (DiffSynth's recipe; animate2_reference_video selects "
             "the Animate-2 pipeline)")
ANIMATE_ON_ANIMATE_2 = ("Wan2.2-Animate's pose and face clips (animate_pose_video, animate_face_video) drive the "
                        "Wan2.2-Animate-14B adapter, not Wan2.2-Animate-2-14B, which is driven by "
                        "animate2_reference_video alone: drop them, or train Wan2.2-Animate-14B without the animate2_* "
                        "inputs")
# DiffSynth's Wan variants not trained here (their recipes are refused as written, naming what is missing)
S2V = ("Wan2.2-S2V-14B (speech-to-video: input_audio, s2v_pose_video, --audio_processor_path) is not trained here: "
       "its wav2vec2 audio encoder, DiffSynth's S2V units (audio embeddings, pose latents, motion frames) and the S2V "
       "DiT's audio layers are not implemented; use DiffSynth-Studio for it")
VAP = ("Video-As-Prompt (vap_video, ByteDance/Video-As-Prompt-Wan2.1-14B) is not trained here: its reference-video "
       "expert (DiffSynth's MotWanModel, a transformer run beside the Wan2.1-I2V-14B DiT with shared attention) is not "
       "implemented; use DiffSynth-Studio for it")
DANCER = ("Wan-Dancer-14B (wantodance_music_path, wantodance_reference_image, wantodance_fps, wantodance_keyframes, "
          "wantodance_keyframes_mask, --framewise_decoding) is not trained here: its music encoder and injector, "
          "keyframe and dynamic-fps inputs and frame-wise VAE decoding are not implemented; use DiffSynth-Studio for it")
FLAGS = {"audio_processor_path": S2V, "framewise_decoding": DANCER}  # of command_line.UNSUPPORTED_FLAGS
LONGCAT = ("meituan-longcat/LongCat-Video is another DiT (LongCat's 13.6B video transformer: fused qkv attention, "
           "its own block layout and LoRA targets attn.qkv, ffn.w1, ...), not Wan's, and is not implemented here; use "
           "DiffSynth-Studio for it")
# on the base Wan family (a run without animate_pose_video)
WAN = {"animate_face_video": ANIMATE_ALONE, "animate_inpaint_video": ANIMATE_REPLACE,
       "animate_mask_video": ANIMATE_REPLACE, "animate2_prompt_ref": ANIMATE_2, "animate2_reference_image": ANIMATE_2,
       "animate2_reference_video": ANIMATE_2, "input_audio": S2V, "s2v_pose_video": S2V, "vap_video": VAP,
       **dict.fromkeys(("wantodance_music_path", "wantodance_reference_image", "wantodance_fps",
                        "wantodance_keyframes", "wantodance_keyframes_mask"), DANCER)}
# on the Animate variant
ANIMATE = {k: v for k, v in WAN.items() if k != "animate_face_video"}
# on the Animate-2 variant
ANIMATE2 = {"animate_pose_video": ANIMATE_ON_ANIMATE_2, "animate_face_video": ANIMATE_ON_ANIMATE_2,
            "animate_inpaint_video": ANIMATE_REPLACE, "animate_mask_video": ANIMATE_REPLACE}
