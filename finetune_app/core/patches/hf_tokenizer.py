"""The Hugging Face tokenizer inside mlx-lm's ``TokenizerWrapper``.

The wrapper forwards attribute reads to the tokenizer it wraps, but code that needs the tokenizer
object itself (``isinstance``, passing it on to transformers) has only the private ``_tokenizer``.
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-lm": "0.32.2"}


def still_needed() -> bool:
    """True while the wrapper exposes no public attribute holding the tokenizer."""
    import inspect

    from mlx_lm.tokenizer_utils import TokenizerWrapper

    public = [n for n, v in inspect.getmembers(TokenizerWrapper) if n in ("tokenizer", "hf_tokenizer")]
    return not public


def unwrap(tokenizer):
    """The tokenizer under mlx-lm's wrapper, or the argument itself when it is not wrapped."""
    if type(tokenizer).__name__ == "TokenizerWrapper":
        return tokenizer._tokenizer
    return tokenizer
