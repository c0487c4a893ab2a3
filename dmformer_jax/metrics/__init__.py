"""Task metrics that need neither the models, the trainer nor the input pipeline."""
