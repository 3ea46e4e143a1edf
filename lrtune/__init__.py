"""lrtune: tune the learning rate of PyTorch image classifiers, and the choices that interact with it."""

__version__ = "0.1.0"

__all__ = ["__version__"]
