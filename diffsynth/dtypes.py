"""The torch dtypes a params.yaml ``model.torch_dtype`` names; kept apart so the export and cache stages need not
import the training loop for one table."""
import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
