"""tunelab: pretrained language models as task-level functions.

Three nouns: ``Config`` (what to do), ``fit`` → ``Run`` (do it, get an artifact), ``Predictor``
(use the artifact). Offline by default: nothing touches the network unless ``allow_network`` is set.
Tasks, methods and strategies are registered by name; ``register_task``, ``register_method`` and
``register_strategy`` add your own without editing tunelab.

Example:
    >>> import tunelab
    >>> run = tunelab.fit(model="minilm", method="lora", train="reviews.csv", output_dir="runs/r")  # doctest: +SKIP
    >>> tunelab.Predictor.load("runs/r").predict("great plot, fine acting")                          # doctest: +SKIP
"""

from .offline import apply_offline_default
from .version import __version__

apply_offline_default()  # before transformers/huggingface_hub are imported anywhere

from . import registry  # noqa: E402
from .analysis import analyze  # noqa: E402
from .api import Run, evaluate, fit, summary  # noqa: E402
from .attack import attack  # noqa: E402
from .augment import register_augmenter  # noqa: E402
from .compress import compress  # noqa: E402
from .config import Config, DataConfig, MethodOptions, TaskOptions, load_config  # noqa: E402
from .continual import SequencePredictor, fit_sequence  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataError,
    ModelNotFoundError,
    TrainingError,
    TunelabError,
)
from .export import export  # noqa: E402
from .hooks import StepContext, TrainHook  # noqa: E402
from .methods import Adaptation, register_method  # noqa: E402
from .predictor import Predictor  # noqa: E402
from .search import SearchResult, search  # noqa: E402
from .serve import serve  # noqa: E402
from .speech import register_recognizer  # noqa: E402
from .strategies import register_strategy  # noqa: E402
from .tasks import Task, register_task  # noqa: E402

__all__ = [
    "Adaptation",
    "ArtifactError",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataError",
    "MethodOptions",
    "ModelNotFoundError",
    "Predictor",
    "Run",
    "StepContext",
    "Task",
    "TaskOptions",
    "TrainHook",
    "TrainingError",
    "TunelabError",
    "__version__",
    "analyze",
    "attack",
    "register_augmenter",
    "register_recognizer",
    "SequencePredictor",
    "fit_sequence",
    "compress",
    "evaluate",
    "export",
    "fit",
    "load_config",
    "register_method",
    "register_strategy",
    "register_task",
    "search",
    "SearchResult",
    "serve",
    "registry",
    "summary",
]
