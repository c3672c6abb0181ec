"""Paths the DVC stages exchange; they must match dvc.yaml."""
from pathlib import Path

FETCHED_DATA = Path("data/fetched")
DATA_OUT = Path("outputs/data")
VALIDATED_METADATA = DATA_OUT / "metadata.jsonl"
DATA_REPORT = Path("reports/data.json")
DATA_RESOLUTIONS = Path("reports/data_resolutions.csv")
MODEL_MANIFEST = Path("outputs/models/manifest.json")
TRAIN_METRICS = Path("outputs/train/metrics.json")
TRAIN_RUN = Path("outputs/train/mlflow_run.json")
LOSS_PLOT = Path("outputs/train/plots/loss.csv")
VAL_PLOT = Path("outputs/train/plots/val_loss.csv")
MEMORY_PLAN = Path("reports/memory_plan.json")
LORA_COMPAT = Path("reports/lora_compat.json")
