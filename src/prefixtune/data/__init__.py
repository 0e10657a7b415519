"""Datasets for training and evaluation: reading sources, built-in tasks, tokenized batches."""

from prefixtune.data.errors import DataError
from prefixtune.data.sources import read_records
from prefixtune.data.spec import HubSource, TaskSpec
from prefixtune.data.tasks import Example, Task, load_task

__all__ = ["DataError", "Example", "HubSource", "Task", "TaskSpec", "load_task", "read_records"]
