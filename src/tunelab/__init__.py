"""tunelab: pretrained language models as task-level functions.

Three nouns: ``Config`` (what to do), ``fit`` → ``Run`` (do it, get an artifact), ``Predictor``
(use the artifact). Offline by default: nothing touches the network unless ``allow_network`` is set.

Example:
    >>> import tunelab
    >>> run = tunelab.fit(model="minilm", method="lora", train="reviews.csv", output_dir="runs/r")  # doctest: +SKIP
    >>> tunelab.Predictor.load("runs/r").predict(["great plot, fine acting"])                       # doctest: +SKIP
"""

__version__ = "0.1.0"

from .offline import apply_offline_default

apply_offline_default()  # before transformers/huggingface_hub are imported anywhere

from .api import Run, evaluate, fit, summary  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataError,
    ModelNotFoundError,
    TrainingError,
    TunelabError,
)
from .predict import Predictor  # noqa: E402

__all__ = [
    "ArtifactError",
    "Config",
    "ConfigError",
    "DataError",
    "ModelNotFoundError",
    "Predictor",
    "Run",
    "TrainingError",
    "TunelabError",
    "__version__",
    "evaluate",
    "fit",
    "load_config",
    "summary",
]
