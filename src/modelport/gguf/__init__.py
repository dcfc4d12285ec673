"""GGUF writing support: ggml block quantizers (`quants`) and llama.cpp's per-tensor type mixes (`mixes`)."""
