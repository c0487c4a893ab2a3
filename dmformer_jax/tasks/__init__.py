"""Tasks the trainer can run, chosen by ``config.task`` (see `base.Task`).

A new task is a `base.Task` subclass registered in `TASKS`; the trainer needs no edit.
"""

from __future__ import annotations

import ml_collections

from dmformer_jax.errors import ConfigError
from dmformer_jax.tasks.base import Task
from dmformer_jax.tasks.classification import ClassificationTask
from dmformer_jax.tasks.segmentation import SegmentationTask

# name -> Task class. Tests register toy tasks here (the loop reads it at run start).
TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "segmentation": SegmentationTask}

# Configs stored in checkpoints written before ``config.task`` existed mean this one.
DEFAULT_TASK = "classification"


def task_name(config: ml_collections.ConfigDict) -> str:
    """``config.task`` (`DEFAULT_TASK` when the config has no such field)."""
    return str(config.get("task", DEFAULT_TASK))


def get_task(config: ml_collections.ConfigDict) -> Task:
    """A fresh instance of the task ``config.task`` names.

    Raises:
      ConfigError: an unknown task name (one line, listing the valid ones).
    """
    name = task_name(config)
    if name not in TASKS:
        raise ConfigError(f"config.task={name!r} is not a task; use one of {sorted(TASKS)}")
    return TASKS[name]()


__all__ = ["DEFAULT_TASK", "TASKS", "ClassificationTask", "SegmentationTask", "Task", "get_task", "task_name"]
