"""LLMs in the export room: a Llama-architecture GGUF (the zoo's SmolLM2, or one a user brings) read
into a PyTorch Llama whose KV cache is a pair of mutable buffers, its tokenizer rebuilt from the GGUF's
metadata, and the export of both into one self-describing artifact.

Modules: :mod:`.gguf_model` (GGUF -> :class:`~.gguf_model.Llama`), :mod:`.tokenizer` (GGUF ->
``tokenizer.json``), :mod:`.zoo` (the model specs), :mod:`.export` (export + LLM verification).
Heavy imports (torch, gguf, tokenizers) happen inside functions.
"""

from __future__ import annotations
