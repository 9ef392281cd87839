"""Pretraining and long-context fine-tuning: ``run_training`` behind ``tapa train`` / ``tapa finetune``."""

from tapa.model.scaling import scaled_model_config
from tapa.train.config import DEFAULT_LR, TrainConfig
from tapa.train.trainer import TrainResult, run_training

__all__ = ["DEFAULT_LR", "TrainConfig", "TrainResult", "run_training", "scaled_model_config"]
