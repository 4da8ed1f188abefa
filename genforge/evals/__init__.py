"""Evaluation: one harness for perplexity, multiple-choice, generation and code tasks."""
