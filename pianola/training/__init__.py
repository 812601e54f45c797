"""Training: presets and the training loop (sequences -> a bundle, tracked in MLflow, registered)."""
