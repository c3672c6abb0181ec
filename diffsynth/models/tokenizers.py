"""Tokenizers trained offline, so tiny presets carry a real, loadable tokenizer without a hub."""
from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships "
    "of the objects and background:",
    "system user assistant picture image video frame",
    "a red green blue yellow white black orange purple pink brown grey circle square triangle cross star "
    "on background with of the and in at small large big tiny photo painting drawing",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 , . : ; ! ?",
]


def train_bpe_tokenizer(out_dir: str | Path, tokenizer_class: str, special_tokens: list[str], eos_token: str,
                        vocab_size: int = 400):
    """A byte-level BPE tokenizer with ``special_tokens``, saved as a transformers ``tokenizer_class`` folder
    (e.g. the fast class of a chat LLM's tokenizer)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    out = getattr(transformers, tokenizer_class)(tokenizer_object=tok, eos_token=eos_token, pad_token=eos_token,
                                                unk_token=None, bos_token=None)
    out.save_pretrained(str(out_dir))
    return out


def train_clip_tokenizer(out_dir: str | Path, vocab_size: int = 300):
    """A byte-level BPE tokenizer with CLIP's start/end tokens, saved as a CLIPTokenizer folder (FLUX tokenizer/)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([c.lower() for c in CORPUS] * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos, eos = tok.token_to_id(specials[0]), tok.token_to_id(specials[1])
    tok.post_processor = processors.TemplateProcessing(single=f"{specials[0]} $A {specials[1]}",
                                                       special_tokens=[(specials[0], bos), (specials[1], eos)])
    # CLIPTokenizer(tokenizer_object=...) swaps in CLIP's own pre-tokenizer (words end in </w>), which a
    # byte-level BPE trained here does not have; the generic fast tokenizer keeps the trained pipeline intact.
    clip = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1],
                         unk_token=specials[1], pad_token=specials[1], model_max_length=77)
    clip.save_pretrained(str(out_dir))
    return clip


def train_sentencepiece_tokenizer(out_dir: str | Path, vocab_size: int = 64):
    """A SentencePiece unigram model (``spiece.model``) saved as a T5Tokenizer folder (T5-XXL / UMT5-XXL).

    transformers 5 ignores ``T5Tokenizer(vocab_file=...)``; the vocabulary is passed as (piece, score) pairs.
    """
    import io

    import sentencepiece as spm
    from transformers import T5Tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 4), model_writer=model, vocab_size=vocab_size,
                                   hard_vocab_limit=False, minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    (out_dir / "spiece.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tok.save_pretrained(str(out_dir))
    return tok
