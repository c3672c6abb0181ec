"""DiffSynth-Studio's training framework as a library: data, models, families, training, tracking, export."""
import logging

__version__ = "0.1.0"

# peft imports bitsandbytes and torchao when installed; at import they log a warning for every native kernel this
# build lacks (CUDA-arch kernels on a CPU, the optional `kernels` package), torch logs their enum registrations and
# diffusers that torchao-serialised checkpoints (which we never load) may not load:
# a dozen lines before every stage's first own line. Their errors still show.
for _name in ("torchao", "bitsandbytes", "torch.utils._pytree", "diffusers.quantizers.torchao"):
    logging.getLogger(_name).setLevel(logging.ERROR)
