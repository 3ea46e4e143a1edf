"""The search side: the space, a trial as a training run, the driver, workers and recovery. Uses Optuna."""
