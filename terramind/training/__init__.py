"""Fine-tuning: task and generator datasets, collators, metrics, adapters, and the training loop."""
