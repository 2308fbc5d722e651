"""No code from a model folder, ever: every command refuses a folder whose config carries auto_map /
model_file or that ships .py files, before any library reads it; no marker file is written and
nothing lands in the HF modules cache. The no_remote_code patch holds even when a library asks
transformers for trust_remote_code=True (mlx-vlm does for its own families).

On e8bd7cc, `generate`/`caption` with the qwen2_vl folder below ran evil.py (the marker appeared and
the code was copied into HF_MODULES_CACHE)."""

from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

pytest.importorskip("mlx.core")

AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoProcessor": "evil.EvilProcessor",
            "AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"],
            "AutoImageProcessor": "evil.EvilImageProcessor", "AutoModel": "evil.EvilModel"}


@pytest.fixture
def marker(tmp_path, monkeypatch):
    d = tmp_path / "markers"
    d.mkdir()
    monkeypatch.setenv("FINETUNE_TEST_MARKER_DIR", str(d))
    return d


def evil_folder(src: Path, dest: Path, marker: Path, *, where: str = "config.json", key: str = "auto_map") -> Path:
    """A copy of a tiny model whose `where` asks for evil.py (which writes a marker when run, then
    defines classes that would load the model normally, so a silent run would go unnoticed)."""
    shutil.copytree(src, dest)
    (dest / "evil.py").write_text(
        "import os, pathlib\n"
        f"pathlib.Path(os.environ.get('FINETUNE_TEST_MARKER_DIR', {str(marker)!r})).joinpath('evil-ran').write_text('x')\n"
        "from transformers import PretrainedConfig as EvilConfig\n"
        "from transformers import AutoProcessor as EvilProcessor, AutoTokenizer as EvilTokenizer\n")
    f = dest / where
    data = json.loads(f.read_text())
    data[key] = AUTO_MAP if key == "auto_map" else "evil.py"
    f.write_text(json.dumps(data))
    return dest


def cli(*argv) -> tuple[int, str]:
    from finetune_app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue() + err.getvalue()


def modules_cache_py() -> list[str]:
    root = Path(os.environ["HF_MODULES_CACHE"])
    return sorted(str(p) for p in root.rglob("*.py")) if root.exists() else []


def commands(model: Path, data: Path, tmp: Path, image: Path | None) -> list[tuple]:
    out = [("generate", "--model", model, "--max-tokens", 2, "hello"),
           ("train", "--model", model, "--data", data, "--output", tmp / "run", "--iters", 1),
           ("export", "--model", model, "--target", "mlx-lm" if image is None else "mlx-vlm", "--output", tmp / "bundle"),
           ("data", "check", data, "--model", model)]
    if image is not None:
        out.append(("caption", "--model", model, "--max-tokens", 2, image))
    return out


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2"])
@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_every_command_refuses_auto_map(family, where, tiny_model, shapes_data, instruction_data, tmp_path, marker):
    model = evil_folder(tiny_model(family), tmp_path / "evil-model", marker, where=where)
    vlm = family == "qwen2_vl"
    image = next((shapes_data / "images").iterdir()) if vlm else None
    data = shapes_data if vlm else instruction_data
    results = [(argv, *cli(*argv)) for argv in commands(model, data, tmp_path, image)]
    assert not list(marker.iterdir()), "code from the model folder ran"
    assert not modules_cache_py(), modules_cache_py()
    for argv, code, text in results:
        assert code == 3, (argv, code, text)
        assert where in text and "auto_map" in text and "never runs" in text, (argv, text)
        assert "Traceback" not in text
    assert not (tmp_path / "run").exists() and not (tmp_path / "bundle").exists()


def test_model_file_and_shipped_python_are_refused(tiny_model, tmp_path, marker):
    model = evil_folder(tiny_model("qwen2"), tmp_path / "mf", marker, key="model_file")
    code, text = cli("generate", "--model", model, "hello")
    assert code == 3 and "model_file" in text and "config.json" in text
    plain = tmp_path / "py"
    shutil.copytree(tiny_model("qwen2"), plain)
    (plain / "sub").mkdir()
    (plain / "sub" / "modeling_x.py").write_text("raise SystemExit('ran')\n")
    code, text = cli("generate", "--model", plain, "hello")
    assert code == 3 and "modeling_x.py" in text and ".py" in text
    linked = tmp_path / "linked"  # hub snapshots hold links to blobs
    shutil.copytree(tiny_model("qwen2"), linked)
    (tmp_path / "blob").write_text("raise SystemExit('ran')\n")
    (linked / "modeling_y.py").symlink_to(tmp_path / "blob")
    code, text = cli("generate", "--model", linked, "hello")
    assert code == 3 and "modeling_y.py" in text
    assert not list(marker.iterdir())


def test_gui_model_picker_path_refuses(tiny_model, tmp_path, marker):
    """The model picker loads through workers.load_model_choice -> load_base: same refusal."""
    from finetune_app.core.errors import ModelError
    from finetune_app.core.models import load_base

    model = evil_folder(tiny_model("qwen2_vl"), tmp_path / "evil", marker)
    with pytest.raises(ModelError, match="auto_map"):
        load_base(model, lazy=True)
    assert not list(marker.iterdir()) and not modules_cache_py()


def test_no_remote_code_patch_blocks_folder_code_even_when_a_library_trusts_it(tiny_model, tmp_path, marker):
    """Second wall: past the folder check, transformers asked with trust_remote_code=True (as
    mlx-vlm does) still never copies or imports the folder's Python."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from finetune_app.core import patches
    from finetune_app.core.errors import ModelError

    patches.apply()
    assert "no_remote_code" in patches.applied()
    model = evil_folder(tiny_model("qwen2_vl"), tmp_path / "evil", marker)
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "not_a_known_family"  # no local class to fall back to
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="never runs code"):
        get_class_from_dynamic_module("evil.EvilConfig", str(model))
    with pytest.raises((ValueError, ModelError)):
        AutoConfig.from_pretrained(str(model), trust_remote_code=True)
    # a known family with auto_map loads its own (library) classes, not the folder's
    from mlx_vlm.utils import load as vlm_load

    known = evil_folder(tiny_model("qwen2_vl"), tmp_path / "known", marker)
    vlm_load(str(known), lazy=True)  # mlx-vlm asks for trust_remote_code=True internally
    assert not list(marker.iterdir()), "code from the model folder ran"
    assert not modules_cache_py(), modules_cache_py()


def test_hub_snapshot_is_checked_like_a_folder(tiny_model, tmp_path, marker, monkeypatch):
    """A downloaded snapshot carrying auto_map is refused before loading."""
    import huggingface_hub

    from finetune_app.core.errors import ModelError
    from finetune_app.core.models import resolve_model_path

    snap = evil_folder(tiny_model("qwen2"), tmp_path / "snapshot", marker)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: str(snap))
    with pytest.raises(ModelError, match="auto_map"):
        resolve_model_path("someone/evil-model")
    assert not list(marker.iterdir())


def test_missing_local_path_shaped_like_a_hub_id_is_not_downloaded(tmp_path, monkeypatch):
    import huggingface_hub

    from finetune_app.core.errors import ModelError
    from finetune_app.core.models import looks_like_hub_id, resolve_model_path

    def no_hub(**kw):
        raise AssertionError("tried the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert not looks_like_hub_id("models/mine") and not looks_like_hub_id("./a/b")
    assert looks_like_hub_id("mlx-community/FastVLM-0.5B-bf16")
    for text in ("models/mine", "./x/y", "a/b/c"):
        with pytest.raises(ModelError, match="does not exist"):
            resolve_model_path(text)


def test_hub_shaped_missing_offline_names_both_possibilities(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = cli("generate", "--model", "nobody-here/no-such-model", "hi")
    assert code == 3 and "local" in text and "offline" in text
