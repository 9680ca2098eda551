"""Tiny random causal LMs and a tokenizer built offline, for backend tests.

The hub is unreachable here, so the tokenizer is a byte-level BPE trained on a small built-in
corpus and the models are randomly initialized (seeded, so every build is identical). They
score nothing meaningfully; they exist to check that cached and uncached paths agree exactly.
"""
from __future__ import annotations

from pathlib import Path

# Words ICM prompts use (label words, field names) appear many times so they become single tokens.
_CORPUS_LINES = [
    "Review: the movie was wonderful and moving. Sentiment: positive",
    "Review: a dull, boring film with no heart. Sentiment: negative",
    "Claim: the earth orbits the sun. Answer: True",
    "Claim: the moon is made of cheese. Answer: False",
    "Question: is water wet? Claim: yes it is. I think this claim is True",
    "Question: can pigs fly? Claim: every pig flies. I think this claim is False",
    "Review: great acting, weak plot, still fun to watch. Sentiment: positive",
    "Review: I left halfway through, a waste of time. Sentiment: negative",
    "The answer is True. The answer is False. This review is positive. This review is negative.",
]

_BOS, _EOS, _UNK = "<bos>", "<eos>", "<unk>"


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=_UNK))
    # add_prefix_space=False: a segment is tokenized on its own and must not gain a leading space.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[_BOS, _EOS, _UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS_LINES * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=_BOS, eos_token=_EOS, unk_token=_UNK, pad_token=_EOS
    )


def _save(model, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_model_dir(path: str | Path, seed: int = 0, max_positions: int = 512) -> Path:
    """Save a tiny random LlamaForCausalLM (2 layers, hidden 64) and its tokenizer under path;
    its context window is max_positions tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return _save(model, tokenizer, path)


def build_tiny_gemma3_dir(path: str | Path, seed: int = 0, sliding_window: int = 16) -> Path:
    """Save a tiny random Gemma3ForCausalLM with a short sliding window, so that test prompts of a
    few dozen tokens already cross it; it has logit softcapping as the real config does not, to
    exercise that path too."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = _build_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=sliding_window,
        # two sliding layers then one full one, like the real 5:1 pattern in miniature
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512,
        final_logit_softcapping=30.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    # Random init leaves some weights (norms) at values that make every layer near-identity;
    # perturb all parameters so attention patterns, and hence window mistakes, show in the output.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return _save(model, tokenizer, path)
