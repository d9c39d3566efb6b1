"""The training service: train, retrain on feedback, calibrate, register (torch + MLflow)."""
