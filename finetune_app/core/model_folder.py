"""Check a model folder before any library reads it: no code of its own, sane sizes, readable files.

The loaders (mlx-vlm, mlx-lm, transformers) trust what a folder says: an `auto_map` entry makes
transformers import a `.py` file shipped in the folder, `model_file` makes mlx-vlm / mlx-lm do the
same, an absurd `vocab_size` is allocated before any weight is read, and a damaged safetensors
header ends in a C++ exception. Everything here reads only small JSON files and the safetensors
headers, so it is cheap enough to run on every load (train, caption, generate, compare, export, the
GUI's model picker and `data check --model`).
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune_app.core.errors import ModelError

# JSON files transformers / mlx-vlm read to pick classes; any of them may carry `auto_map`.
CLASS_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
               "video_preprocessor_config.json", "feature_extractor_config.json")
CODE_KEYS = ("auto_map", "model_file")
# Other JSON files the loaders read (a list or garbage there ends in an AttributeError deep inside).
OBJECT_FILES = ("generation_config.json", "model.safetensors.index.json", "special_tokens_map.json",
                "chat_template.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt",
                   "tiktoken.model")
NO_CODE_FIX = ("Finetune never runs Python shipped with a model. Use a copy of the model without it "
               "(e.g. an mlx-community conversion of a family mlx-vlm / mlx-lm support natively).")

# Upper bounds far above any real model (largest vocabularies ~262k, hidden sizes ~16k, ~130
# layers): a value past them is a damaged or hostile config.json, refused before anything is
# allocated for it.
SIZE_LIMITS = {
    "vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18,
    "moe_intermediate_size": 1 << 18, "num_hidden_layers": 1024, "num_layers": 1024, "depth": 1024,
    "num_attention_heads": 4096, "num_key_value_heads": 4096, "num_heads": 4096, "head_dim": 8192,
    "num_experts": 4096, "num_local_experts": 4096, "embed_dim": 1 << 16, "image_size": 1 << 14,
    "patch_size": 1 << 12, "max_position_embeddings": 1 << 27, "projection_dim": 1 << 16,
}


def read_json_object(path: Path, what: str = "") -> dict:
    """A JSON file that must hold an object, as a ModelError naming the file when it does not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path.name} is not valid JSON ({exc}).",
                         "Re-download the model or restore the file.", file=path) from None
    except OSError as exc:
        raise ModelError(f"{path.name} cannot be read ({exc.strerror or exc}).",
                         "Check the file's permissions, or re-download the model.", file=path) from None
    if not isinstance(data, dict):
        raise ModelError(f"{path.name} must hold a JSON object {what}but holds a {type(data).__name__}.",
                         "Re-download the model or restore the file.", file=path)
    return data


def check_no_code(path: Path) -> None:
    """Refuse a folder that asks to run its own Python (auto_map / model_file) or ships .py files."""
    for name in CLASS_FILES:
        f = path / name
        if not f.is_file():
            continue
        data = read_json_object(f)
        for key in CODE_KEYS:
            if data.get(key):
                target = data[key]
                shown = json.dumps(target)[:200]
                raise ModelError(f"{name} carries '{key}' ({shown}), which asks to run Python code shipped in the "
                                 f"model folder.", f"{NO_CODE_FIX} If the family is supported natively, "
                                 f"removing the '{key}' entry is enough.", file=f, field=key)
    shipped = _python_files(path)
    if shipped:
        listed = ", ".join(shipped[:3]) + (" …" if len(shipped) > 3 else "")
        raise ModelError(f"the model folder ships Python code ({listed}).",
                         f"{NO_CODE_FIX} Delete the .py files from your copy if the family is supported natively.",
                         file=path / shipped[0])


def _python_files(path: Path, depth: int = 3) -> list[str]:
    """.py files in the folder and its subfolders (a few levels: model folders are shallow, and a
    folder picked by mistake may hold a whole tree)."""
    found: list[str] = []
    level = [path]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            try:
                entries = list(d.iterdir())
            except OSError:
                continue
            for e in entries:
                if e.suffix == ".py" and e.is_file():  # also a link (hub snapshots are links to blobs)
                    found.append(e.relative_to(path).as_posix())
                elif e.is_dir() and not e.is_symlink():
                    nxt.append(e)
        level = nxt
    return sorted(found)


def check_sizes(config: dict, file: Path) -> None:
    """Whole, positive and not absurd: the sizes the libraries allocate from."""

    def walk(obj: dict, prefix: str, depth: int) -> None:
        for key, value in obj.items():
            if isinstance(value, dict) and depth < 3:
                walk(value, f"{prefix}{key}.", depth + 1)
            elif key in SIZE_LIMITS and value is not None:
                for v in (value if isinstance(value, list) else [value]):
                    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= SIZE_LIMITS[key]:
                        raise ModelError(f"config.json sets {prefix}{key} to {json.dumps(value)[:80]}, which is not a "
                                         f"whole number between 1 and {SIZE_LIMITS[key]:,}.",
                                         "The file is damaged or not a real model's config; re-download the model.",
                                         file=file, field=prefix + key)

    walk(config, "", 0)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type.strip():
        raise ModelError("config.json has no model_type (a string), so the architecture is unknown.",
                         "Use a model converted for MLX (mlx-community) whose config.json names its model_type.",
                         file=file, field="model_type")


def check_weights(path: Path) -> None:
    """Every safetensors file has a readable header whose tensors fit in the file."""
    from finetune_app.core import tensor_files

    files = sorted(path.glob("*.safetensors"))
    if not files:
        extra = " It has PyTorch .bin weights, which are not loaded (only safetensors are)." if list(path.glob("*.bin")) else ""
        raise ModelError(f"'{path}' has no .safetensors weights.{extra}",
                         "Use an MLX or safetensors copy of the model (e.g. from mlx-community), or convert it with "
                         "`python -m mlx_vlm convert` / `mlx_lm.convert`.", file=path)
    for f in files:
        try:
            tensor_files.read_header(f)
        except ValueError as exc:
            raise ModelError(f"the weights file {f.name} is damaged: {exc}.",
                             "Re-download the model (an interrupted download leaves such files).", file=f) from None


def check_tokenizer(path: Path) -> None:
    """Tokenizer files present (a VLM folder without them fails deep in the processor) and
    tokenizer.json readable."""
    if (path / "tokenizer.json").is_file():
        read_json_object(path / "tokenizer.json")
    if any((path / n).is_file() for n in TOKENIZER_FILES) or list(path.glob("*.tiktoken")):
        return
    raise ModelError(f"the model folder has no tokenizer files (one of {', '.join(TOKENIZER_FILES[:3])}).",
                     "Copy the tokenizer files (tokenizer.json, tokenizer_config.json) from the original model "
                     "into the folder, or re-download the model.", file=path)


def chat_template_source(path: Path) -> tuple[Path, str] | None:
    """(file, text) of the chat template the tokenizer / processor will use, if any."""
    for name in ("chat_template.jinja",):
        if (path / name).is_file():
            return path / name, (path / name).read_text(encoding="utf-8", errors="replace")
    for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
        f = path / name
        if f.is_file():
            value = read_json_object(f).get(key)
            if isinstance(value, list):  # [{"name": ..., "template": ...}]
                value = next((v.get("template") for v in value if isinstance(v, dict)), None)
            if isinstance(value, str):
                return f, value
    return None


def check_chat_template(path: Path) -> None:
    """A template that does not parse fails every prompt later; say so now, with its line."""
    found = chat_template_source(path)
    if found is None:
        return
    f, text = found
    from jinja2 import TemplateSyntaxError

    from finetune_app.core.patches.chat_template import compile_chat_template

    try:
        compile_chat_template(text)
    except TemplateSyntaxError as exc:
        raise ModelError(f"the chat template in {f.name} does not parse ({exc.message}).",
                         "Restore the template from the original model (chat_template.jinja or the chat_template "
                         "entry of tokenizer_config.json).", file=f, line=exc.lineno if f.suffix == ".jinja" else None,
                         field=None if f.suffix == ".jinja" else "chat_template") from None


def check_model_folder(path: Path) -> dict:
    """All checks, cheapest first; returns config.json's object."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"'{path}' is not a model folder: it has no config.json.",
                         "Choose the folder that holds config.json, the tokenizer files and the .safetensors weights.",
                         file=path)
    config = read_json_object(config_file)
    check_no_code(path)
    for name in OBJECT_FILES:
        if (path / name).is_file():
            read_json_object(path / name)
    check_sizes(config, config_file)
    check_weights(path)
    check_tokenizer(path)
    check_chat_template(path)
    return config
