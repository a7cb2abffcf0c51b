"""One train–prune–share–encode cycle, runnable with no Ray and no MLflow.

``run_cycle(config)`` runs it in this process and returns a :class:`CycleResult`; its settings
are a :class:`CycleConfig`. Beside it: the models and data sets it builds, training, the result
schema every later room uses, the Pareto maths and the plots.
"""

from .config import ConfigError, CycleConfig
from .datasets import DataError, list_datasets, load_dataset
from .models import create_model, list_models, register_model
from .results import DIVERGED, FINAL, PHASES, STEPS, CycleResult, Report, Trial
from .run import CycleCallbacks, run_cycle, train_baseline
from .train import DivergedError

__all__ = [
    "DIVERGED",
    "FINAL",
    "PHASES",
    "STEPS",
    "ConfigError",
    "CycleCallbacks",
    "CycleConfig",
    "CycleResult",
    "DataError",
    "DivergedError",
    "Report",
    "Trial",
    "create_model",
    "list_datasets",
    "list_models",
    "load_dataset",
    "register_model",
    "run_cycle",
    "train_baseline",
]
