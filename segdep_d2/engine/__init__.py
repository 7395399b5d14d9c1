from .trainer import SegDepTrainer, build_evaluators

__all__ = ["SegDepTrainer", "build_evaluators"]
