"""Every place the app changes a library it pins, or reaches past its public API: one module
per patch, each naming the library version it was written against (`WRITTEN_FOR`) and saying
whether it is still needed (`still_needed()`); tests/test_patches.py checks both and that the
patch works, so an upgrade that makes one obsolete or breaks it fails a test.

Behaviour patches (`BEHAVIOUR`) are applied by `apply()`: idempotent, safe from several threads,
called by the model loader and the tiny-model builder, never at package import. The other modules
are wrappers of private library functions, imported where they are used.
"""

from __future__ import annotations

import threading

from finetune_app.core.patches import (chat_template, deepseek_moe_gate, deepseek_tile_count,
                                       fastvlm_vision_config, hf_tokenizer, llava_next_anyres,
                                       llava_processor_kwargs,
                                       mllama_vision_batch, mlx_launch, mlx_lm_classes, mlx_lm_tuner_imports,
                                       no_remote_code,
                                       phi3v_vision_config, processor_kwargs_advice, qwen_rope_state,
                                       sacrebleu_stats,
                                       transformers_without_torch)

BEHAVIOUR = {"fastvlm_vision_config": fastvlm_vision_config.apply, "no_remote_code": no_remote_code.apply,
             "deepseek_moe_gate": deepseek_moe_gate.apply,
             "deepseek_tile_count": deepseek_tile_count.apply,
             "mllama_vision_batch": mllama_vision_batch.apply,
             "llava_processor_kwargs": llava_processor_kwargs.apply,
             "phi3v_vision_config": phi3v_vision_config.apply,
             "llava_next_anyres": llava_next_anyres.apply,
             "processor_kwargs_advice": processor_kwargs_advice.apply}
MODULES = (fastvlm_vision_config, no_remote_code, deepseek_moe_gate, deepseek_tile_count, mllama_vision_batch,
           llava_processor_kwargs, phi3v_vision_config, llava_next_anyres, processor_kwargs_advice,
           chat_template, sacrebleu_stats, hf_tokenizer, qwen_rope_state, mlx_launch, mlx_lm_classes,
           mlx_lm_tuner_imports, transformers_without_torch)

_lock = threading.Lock()
_applied: set[str] = set()


def apply(only: tuple[str, ...] | None = None) -> None:
    """Apply every behaviour patch (or the named ones) once per process."""
    with _lock:
        for name, patch in BEHAVIOUR.items():
            if name not in _applied and (only is None or name in only):
                patch()
                _applied.add(name)


def applied() -> frozenset[str]:
    """Names of the patches applied in this process (for diagnostics and tests)."""
    return frozenset(_applied)
