"""DiffSynth-Studio's training framework as a library: data, models, families, training, tracking, export."""
import logging

__version__ = "0.1.0"

# peft imports bitsandbytes and torchao when installed; at import they log a warning for every native kernel this
# build lacks (CUDA-arch kernels on a CPU, the optional `kernels` package) and torch logs their enum registrations:
# a dozen lines before every stage's first own line. Their errors still show.
for _name in ("torchao", "bitsandbytes", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
