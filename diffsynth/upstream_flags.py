"""DiffSynth-Studio flags that only the ``train.py`` of a family we do not train yet defines.

Read from DiffSynth-Studio's ``examples/<family>/model_training/train.py`` parsers (and ``add_dmd2_config`` in
``diffsynth/diffusion/parsers.py``, which only the FLUX.2 DMD2 script adds). Such a flag is refused in one line that
names the flag and the family, not with argparse's generic ``unrecognized arguments``. Flags of families we do
train that we do not implement yet are ``UNSUPPORTED_FLAGS`` in ``command_line.py``.
"""
from __future__ import annotations

from .errors import ConfigError

# DiffSynth family (as its examples name it) -> the flags only its train.py defines
UPSTREAM_FAMILY_FLAGS: dict[str, tuple[str, ...]] = {
    "ACE-Step": ("silence_latent_path", "max_audio_duration"),
    "Anima": ("tokenizer_t5xxl_path",),
    "FLUX.2 DMD2": (
        "embedded_guidance",
        "dmd2_student_update_freq", "dmd2_student_sample_steps", "dmd2_student_sample_type",
        "dmd2_student_schedule", "dmd2_student_t_list", "dmd2_matching_t_min", "dmd2_matching_t_max",
        "dmd2_matching_t_sampling", "dmd2_matching_t_mean", "dmd2_matching_t_std", "dmd2_gan_loss_weight",
        "dmd2_gan_r1_reg_weight", "dmd2_gan_r1_reg_alpha", "dmd2_fake_score_learning_rate",
        "dmd2_discriminator_learning_rate", "dmd2_feature_indices", "dmd2_teacher_cfg_scale",
        "dmd2_student_grad_clip_norm",
    ),
    "HiDream-O1-Image": ("processor_config", "noise_scale"),
    "LingBot-Video": ("first_frame_as_condition",),
    "LTX-2": ("frame_rate",),
    "MiniMax-H3": ("silent_on_missing_audio",),
    "MOVA": ("frame_rate",),
}


def families_of(flag: str) -> list[str]:
    """The DiffSynth families whose train.py alone defines ``--flag`` (empty: not such a flag)."""
    return [family for family, flags in UPSTREAM_FAMILY_FLAGS.items() if flag in flags]


def all_upstream_flags() -> list[str]:
    return sorted({flag for flags in UPSTREAM_FAMILY_FLAGS.values() for flag in flags})


def _either(names: list[str], word: str) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {word} " + names[-1]


def message(flag: str) -> str | None:
    """The one line that refuses ``--flag``, or None when no other family's train.py defines it."""
    families = families_of(flag)
    if not families:
        return None
    trainer = "trainer" if len(families) == 1 else "trainers"
    return (f"--{flag} belongs to DiffSynth's {_either(families, 'and')} {trainer}; this project does not train "
            f"{_either(families, 'or')} yet (remove the flag)")


def refuse_upstream_flags(argv: list[str]) -> None:
    """Raise ConfigError naming the first flag in ``argv`` that belongs to a DiffSynth family we do not train."""
    for token in argv:
        if token.startswith("--"):
            text = message(token[2:].split("=", 1)[0])
            if text:
                raise ConfigError(text)
