"""Speech: recognition (Whisper through faster-whisper) and synthesis (a Piper voice in a process of
its own). Both need the `speech` extra; importing this package imports neither."""
