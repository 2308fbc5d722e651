"""mlx-vlm's Qwen-VL language models keep a prompt's mRoPE state on the model object
(`_rope_deltas`, `_position_ids`): generation sets it on the prompt and reads it while decoding.
The engine computes each row's mRoPE ids on the host with the model's own `get_rope_index` and
must leave no state behind that a later call (samples during training, the next row) would take
for its own prompt. The library has no public way to clear it.
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-vlm": "0.7.10"}
STATE = ("_rope_deltas", "_position_ids")


def still_needed() -> bool:
    """True while the Qwen-VL language models keep that state and offer no public reset."""
    import inspect

    from mlx_vlm.models.qwen2_vl.language import LanguageModel

    source = inspect.getsource(LanguageModel)
    return all(f"self.{name} = None" in source for name in STATE) and not hasattr(LanguageModel, "reset_rope_state")


def clear(language_model) -> None:
    """Forget the last prompt's mRoPE state (as the model is after loading)."""
    for name in STATE:
        if hasattr(language_model, name):
            setattr(language_model, name, None)
