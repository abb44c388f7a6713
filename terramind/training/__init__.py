"""Training TerraMind: fine-tuning, the generator's datasets and continued pre-training."""
