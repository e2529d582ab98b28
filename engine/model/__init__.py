"""The model as serving needs it: load a versioned model folder, check it, score one row.

Training lives in `engine.offline.train`, which drives the replay, which
drives the pipeline that uses this package.
"""

from engine.model.explain import Contribution
from engine.model.predictor import Model, ModelInvalid, load_model, resolve_model_dir

__all__ = ["Contribution", "Model", "ModelInvalid", "load_model", "resolve_model_dir"]
