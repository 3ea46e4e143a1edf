"""Training, with no knowledge of Optuna: data, models, losses, schedules, optimizer, the epoch loop, checkpoints."""
