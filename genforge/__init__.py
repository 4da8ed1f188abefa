"""genforge: local-first generative AI — load, train, adapt and serve open-weight models."""

__version__ = "0.1.0"
