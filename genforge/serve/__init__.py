"""The OpenAI-compatible HTTP server (`genforge serve`): routes only; the engine does the work."""
