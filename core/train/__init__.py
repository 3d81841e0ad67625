"""Training: the Trainer and the units it wires (step, selection, freezing, state)."""
from core.train.state import NonFiniteWeightsError
from core.train.step import NonFiniteLossError, TrainStep
from core.train.trainer import Trainer

__all__ = ["NonFiniteLossError", "NonFiniteWeightsError", "TrainStep", "Trainer"]
