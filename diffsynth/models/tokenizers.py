"""Tokenizers trained offline, so tiny presets carry a real, loadable tokenizer without a hub."""
from __future__ import annotations

from pathlib import Path

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]

CORPUS = [
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships "
    "of the objects and background:",
    "system user assistant picture image video frame",
    "a red green blue yellow white black orange purple pink brown grey circle square triangle cross star "
    "on background with of the and in at small large big tiny photo painting drawing",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 , . : ; ! ?",
]


def train_qwen_tokenizer(out_dir: str | Path, vocab_size: int = 400):
    """A byte-level BPE tokenizer with Qwen's special tokens, saved as a Qwen2Tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    qwen = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None)
    qwen.save_pretrained(str(out_dir))
    return qwen
