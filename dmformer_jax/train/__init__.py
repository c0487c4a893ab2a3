"""Training: config -> mesh -> train state -> jitted steps -> Orbax checkpoints.

``main(argv)`` is what ``train.py`` runs; `train_and_evaluate` and
`evaluate_checkpoint` are the same as library calls.
"""

from dmformer_jax.train.cli import main
from dmformer_jax.train.loop import (
    PREEMPTED_EXIT_CODE,
    Preempted,
    RunResult,
    TrainingDivergedError,
    evaluate_checkpoint,
    train_and_evaluate,
)

__all__ = [
    "main", "train_and_evaluate", "evaluate_checkpoint", "RunResult",
    "Preempted", "TrainingDivergedError", "PREEMPTED_EXIT_CODE",
]
