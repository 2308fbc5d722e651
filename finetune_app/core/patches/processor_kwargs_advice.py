"""transformers' advice "Kwargs passed to `processor.__call__` have to be in `processor_kwargs`
dict", dropped where mlx-vlm's chat-template call makes it (#16 torchhide).

mlx-vlm 0.7.10's `prompt_utils.get_chat_template` (what `apply_chat_template`, and so every
mlx-vlm layout's `render`, calls) adds `enable_thinking=False` to the keyword arguments of
`processor.apply_chat_template` wherever that method takes `**kwargs`, as transformers'
`ProcessorMixin.apply_chat_template` does. transformers 5.x (5.17 to 5.25) logs the advice with
`logger.warning` (not once) for every call whose template does not name the argument, e.g.
Qwen2-VL's: a training run renders each row several times, 6 lines a row on the H200 host (6,024
in a 1,000-row run's log). The argument is still honoured (and unused: the call does not tokenize),
so only this message is dropped, by a filter on the logger that makes it; the text is unchanged.
"""

from __future__ import annotations

import logging

WRITTEN_FOR = {"mlx-vlm": "0.7.10", "transformers": "5.25.0"}
LOGGER = "transformers.processing_utils"
MESSAGE = "have to be in `processor_kwargs` dict"


class DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return MESSAGE not in record.getMessage()


def still_needed() -> bool:
    """True while mlx-vlm adds its own template argument and transformers advises against it."""
    from finetune_app.core.patches.library_source import library_text

    return (MESSAGE in library_text("transformers", "processing_utils.py")
            and 'template_kwargs["enable_thinking"] = False' in library_text("mlx_vlm", "prompt_utils.py"))


def apply() -> None:
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, DropAdvice) for f in logger.filters):
        logger.addFilter(DropAdvice())
