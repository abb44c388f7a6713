"""Training TerraMind: fine-tuning, task and generator datasets, collators, metrics, adapters, continued pre-training."""
