"""Task registry: one module per task; adding a task is one file plus one line here.

A task object carries plain-data ``state`` (saved in the artifact) and provides: ``from_training_data``,
``encode`` (records -> features, the same code at training and prediction time), ``collate``,
``build_model``, ``loss_sum`` + ``loss_units`` (summed loss and its normaliser), ``extract`` +
``per_token`` (what inference keeps of the model output), ``decode`` (outputs -> one prediction per
record), ``compute_metrics`` and ``primary_metric``.
"""

from .classification import ClassificationTask
from .generation import GenerationTask
from .ner import NerTask
from .qa import QaTask
from .relation import RelationTask

TASKS = {"classification": ClassificationTask, "ner": NerTask, "relation": RelationTask, "qa": QaTask,
         "summarization": GenerationTask, "translation": GenerationTask, "dialogue": GenerationTask}

__all__ = ["TASKS", "ClassificationTask", "GenerationTask", "NerTask", "QaTask", "RelationTask"]
