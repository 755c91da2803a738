"""Task registry: one module per task; adding a task is one file plus one line here."""

from .classification import ClassificationTask

TASKS = {"classification": ClassificationTask}

__all__ = ["TASKS", "ClassificationTask"]
