"""Original TerraMind checkpoints and tokenizers converted to Transformers folders, model cards, and Hub upload."""
