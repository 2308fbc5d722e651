"""transformers imported as if torch were not installed, for a process that trains a text model
or a VLM whose processor is the same with torch and without.

A text run uses transformers for its tokenizer and chat template only (the model is mlx-lm's),
yet where torch is installed (a GPU host; a Mac user's venv that has it for other work)
`import transformers` pulls it in: mlx-lm's `from transformers import AutoTokenizer` reaches
`configuration_utils` -> `modeling_rope_utils`, which imports torch when `is_torch_available()`.
That is 2.6 s of the H200 host's start and ~3 s here (#16 textwarm), for nothing the run uses.

transformers decides whether torch is there once per process: 5.x through the cached
`is_torch_available()` (`importlib.util.find_spec("torch")`), 4.x at `import_utils`' import
(also `find_spec`, after `USE_TORCH`). `hide()` imports transformers and asks it with
`sys.modules["torch"] = None` in place (find_spec answers None, `import torch` fails), so both
record "no torch"; then it removes the entry: transformers goes on without torch for the life of
the process, and anything else that imports torch itself still gets it. transformers' advice that
PyTorch was not found is silenced for that import (the user may well have it).

Only for processes that load nothing but one model (the CLI's `train`: cli/train.py), and only
where that model is served as trained (`serves_the_same`): a text model, or a VLM of a type in
`core.families.SAME_PROCESSOR_WITHOUT_TORCH`. Where torch is importable, transformers 5.x picks the
torchvision back-end of an image processor by default, whose pixels differ from the PIL back-end's;
a VLM trained without torch and served (`mlx_vlm.load`) with it would then see other pixels. For
the listed types mlx-vlm 0.7.10's load builds the same processor either way: its own numpy / MLX
processors (Qwen2/2.5/3-VL, Qwen3.5, FastVLM, Pixtral, Mistral 3, Phi-3-V, DeepSeek-VL2) or its
processors around transformers' PIL back-end, which it asks for with `use_fast=False` (LLaVA,
LLaVA-NeXT, PaliGemma, Gemma 3, Idefics3, SmolVLM, Mllama). Measured (#16 vlmtorch, torchhide,
docs/performance.md): the same classes and bit-identical pixel arrays with torch 2.14 +
torchvision 0.29 importable, with them hidden by `hide()`, and without them, on odd sizes, RGBA,
grey and palette pictures, with transformers 5.25 (and 5.17 with its rule mended). transformers
5.17 (fixed in 5.18) takes any image-processing file that merely names `TorchvisionBackend` as
needing torch + torchvision (`pil_files_need_torch`): without torch its `AutoImageProcessor` and
the Idefics3 / SmolVLM PIL processors are placeholders, so mlx-vlm's processors of the second
group fail (Idefics3, SmolVLM) or fall back to transformers' own (the others); there those types
keep torch. Any other VLM keeps torch (its processor may be the torchvision one when served). The
GUI never calls this.
"""

from __future__ import annotations

import os
import re
import sys

from finetune_app.core.patches.library_source import library_text

WRITTEN_FOR = {"transformers": "5.25.0", "mlx-vlm": "0.7.10"}
ADVICE = "TRANSFORMERS_NO_ADVISORY_WARNINGS"


def serves_the_same(kind: str, model_type: str) -> bool:
    """True where training with torch hidden from transformers gives the model the inputs its
    serving (`mlx_vlm.load` / `mlx_lm.load`, torch or not) gives it: text, and the listed VLMs."""
    from finetune_app.core.families import processor_same_without_torch

    return kind == "text" or processor_same_without_torch(model_type, pil_needs_torch=pil_files_need_torch())


# transformers 5.17's rule for the back-ends an image-processing file needs: any mention of the name
# (a docstring, a comment, a lazy import) makes it need torch + torchvision; 5.18 and later ask for
# a class deriving from TorchvisionBackend
_BY_MENTION = re.compile(r"""["']TorchvisionBackend["']\s+in\s+content""")


def pil_files_need_torch(source: str | None = None) -> bool:
    """True where the installed transformers (or `source`, the text of its utils/import_utils.py)
    takes an image-processing file that only names TorchvisionBackend as needing torch: with torch
    hidden, its AutoImageProcessor (models/auto/image_processing_auto.py) and the Idefics3 / SmolVLM
    PIL processors are then placeholders that raise."""
    if source is None:  # (the file: importing transformers is what hide() must come before)
        source = library_text("transformers", "utils/import_utils.py")
    return bool(_BY_MENTION.search(source))


def still_needed() -> bool:
    """True while transformers' configuration classes (which mlx-lm's tokenizer import reaches)
    import torch where it is installed."""
    return any("import torch" in library_text("transformers", f) for f in ("modeling_rope_utils.py", "configuration_utils.py"))


def hide() -> bool:
    """Import transformers so that it treats torch as absent; True when it did. Nothing is done
    (False) once transformers or torch is imported: the choice was made already."""
    if "transformers" in sys.modules or "torch" in sys.modules:
        return False
    advice = os.environ.get(ADVICE)
    sys.modules["torch"] = None  # type: ignore[assignment]  # find_spec -> None; `import torch` raises
    os.environ[ADVICE] = "1"
    try:
        from transformers.utils import import_utils

        return not import_utils.is_torch_available()  # 5.x caches the answer here; 4.x holds it since import
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
        if advice is None:
            os.environ.pop(ADVICE, None)
        else:
            os.environ[ADVICE] = advice

