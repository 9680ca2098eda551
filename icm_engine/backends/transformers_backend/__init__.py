"""A LanguageModel over a transformers causal LM, exact and fast for ICM's leave-one-out prompts.

Two modes share the same weights:
- fast (default): a prefix key/value store (kv_cache.PrefixKVStore) lets each prompt forward only
  the tokens after its longest prefix already computed; prompts of a batch run in lexicographic
  token order, which is a depth-first walk of their prefix tree, so every shared prefix is
  forwarded once. The vocabulary projection is deferred and done for all prompts of a batch in a
  few matrix products, because on CPU one 262k-row projection (Gemma 3) costs as much as
  forwarding dozens of tokens.
- naive (`TransformersLM.naive()`): the reference; one independent forward of the model's own
  causal-LM head per prompt, no cache, no batching.

Both return log P(first token of each label word) normalized over the whole vocabulary.
Sliding-window layers (Gemma 3) stay exact in fast mode: the store keeps every layer's full
keys/values and the model is handed a cache of plain full layers, so the model builds its own
sliding-window mask from absolute positions exactly as in an uncached forward.

model.py holds the class and its state; the other files hold one concern each (see model.py).
"""
from .model import TransformersLM

__all__ = ["TransformersLM"]
