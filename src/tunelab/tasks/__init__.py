"""The built-in tasks, registered by name. A task of your own: subclass ``Task`` and ``register_task``.

Example:
    >>> from tunelab.registry import TASKS
    >>> TASKS.names()
    ['classification', 'ner', 'relation', 'qa', 'summarization', 'translation', 'dialogue']
"""

from .base import Task, register_task
from .classification import ClassificationTask
from .generation import DialogueTask, GenerationTask, SummarizationTask, TranslationTask
from .image_text import ImageTextClassificationTask
from .ner import NerTask
from .qa import QaTask
from .relation import RelationTask

for _name, _task in {"classification": ClassificationTask, "ner": NerTask, "relation": RelationTask, "qa": QaTask,
                     "summarization": SummarizationTask, "translation": TranslationTask,
                     "dialogue": DialogueTask}.items():
    register_task(_name, _task)
ClassificationTask.with_images = ImageTextClassificationTask  # data.image_column: the text+image form

__all__ = ["ClassificationTask", "DialogueTask", "GenerationTask", "ImageTextClassificationTask", "NerTask", "QaTask",
           "RelationTask", "SummarizationTask", "Task", "TranslationTask", "register_task"]
