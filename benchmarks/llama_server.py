"""llama-cpp-python's OpenAI-compatible server with llama.cpp's weight repacking turned off.

    python benchmarks/llama_server.py --model FILE.gguf --n_threads 2 ...   # the server's own flags

On these CPUs llama.cpp's AMX repacking of quantized weights crashes (SIGSEGV in
`ggml_backend_amx_mul_mat`, see PEERS.md) and the server has no flag for `use_extra_bufts`, so this
sets it in the default model parameters every `Llama` starts from, then runs the server's main.
"""

from __future__ import annotations

import runpy


def disable_repack() -> None:
    """Make every `llama_cpp.Llama` load with `use_extra_bufts=False` (the CLI's `--no-repack`)."""
    from llama_cpp import llama_cpp as lib

    default_params = lib.llama_model_default_params

    def without_repack():
        params = default_params()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_repack


if __name__ == "__main__":
    disable_repack()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
