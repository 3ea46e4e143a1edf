"""From a study to a model in use: retrain a trial into a model folder, load it, predict, evaluate, export."""

from lrtune.deploy.modelfolder import LoadedModel, load_model_folder, load_trial_weights
from lrtune.deploy.predict import Predictions
from lrtune.deploy.retrain import TrainedModel

__all__ = ["LoadedModel", "Predictions", "TrainedModel", "load_model_folder", "load_trial_weights"]
