"""Datasets for training and evaluation: reading files, built-in tasks, tokenized batches."""

from prefixtune.data.sources import DataError, read_records
from prefixtune.data.tasks import Example, Task, TaskSpec, load_task

__all__ = ["DataError", "Example", "Task", "TaskSpec", "load_task", "read_records"]
