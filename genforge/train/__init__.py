"""Training: corpora, tokenizers, and (next) the pretraining loop."""
