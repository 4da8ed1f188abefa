"""Reading model weights: GGUF files and Hugging Face safetensors directories, by name maps."""
