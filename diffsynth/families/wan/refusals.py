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
# on the base Wan family (a run without animate_pose_video)
WAN = {"animate_face_video": ANIMATE_ALONE, "animate_inpaint_video": ANIMATE_REPLACE,
       "animate_mask_video": ANIMATE_REPLACE, "animate2_prompt_ref": ANIMATE_2, "animate2_reference_image": ANIMATE_2,
       "animate2_reference_video": ANIMATE_2}
# on the Animate variant
ANIMATE = {k: v for k, v in WAN.items() if k != "animate_face_video"}
# on the Animate-2 variant
ANIMATE2 = {"animate_pose_video": ANIMATE_ON_ANIMATE_2, "animate_face_video": ANIMATE_ON_ANIMATE_2,
            "animate_inpaint_video": ANIMATE_REPLACE, "animate_mask_video": ANIMATE_REPLACE}
