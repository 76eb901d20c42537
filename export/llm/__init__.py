"""LLMs in the export room: a GGUF of a supported family (llama, qwen2/3, gemma/2/3, phi3: the zoo's
SmolLM2, or one a user brings) read into one PyTorch model definition whose KV cache is a pair of mutable
buffers per layer, its tokenizer rebuilt from the GGUF's
metadata, and the export of both into one self-describing artifact.

Modules: :mod:`.gguf_model` (GGUF -> :class:`~.gguf_model.Llama`), :mod:`.families` (each family's
switches), :mod:`.tokenizer` (GGUF -> ``tokenizer.json``), :mod:`.chat` (the bounded chat template),
:mod:`.llamacpp` (llama.cpp, the reference), :mod:`.zoo` (the model specs), :mod:`.export` (export + LLM
verification).
Heavy imports (torch, gguf, tokenizers) happen inside functions.
"""

from __future__ import annotations
