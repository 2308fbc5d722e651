"""Fixed costs of a CLI run (#16): what a text run imports, the end's adapter written once, and
the CLI's wording of validation counts and of a bad --config value."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest


def test_text_run_setup_does_not_import_mlx_vlm(tiny_model):
    """Loading a text model and attaching LoRA needs mlx-lm only; mlx-vlm costs seconds to import."""
    folder = tiny_model("llama")
    code = ("import sys\n"
            "from finetune_app.core.config import TrainConfig\n"
            "from finetune_app.core import adapters, patches\n"
            "from finetune_app.core.models import load_base\n"
            f"base = load_base({str(folder)!r})\n"
            "adapters.attach(base, TrainConfig(lora_rank=4))\n"
            "assert 'no_remote_code' in patches.applied(), patches.applied()\n"
            "print(sorted(m for m in sys.modules if m.startswith('mlx_vlm')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_lora_classes_are_the_libraries():
    """The adapter layer classes are found by their defining modules' names; a library that moves
    them must fail here, not silently leave adapters untrained (set_train_modes)."""
    from mlx_lm.tuner.dora import DoRALinear as LmDoRA
    from mlx_lm.tuner.lora import LoRALinear as LmLoRA
    from mlx_vlm.trainer.peft import DoRALinear, LoRALinear

    from finetune_app.core import adapters

    assert set(adapters._lora_classes()) == {LoRALinear, DoRALinear, LmLoRA, LmDoRA}


def test_run_folder_adapter_is_the_checkpoints_file(tiny_model, tmp_path):
    """`same_as`: the run folder's adapter is the checkpoint's file (one write), and it stays when
    the checkpoint is removed."""
    import shutil

    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.models import load_base

    base = load_base(tiny_model("llama"))
    config = adapters.attach(base, TrainConfig(lora_rank=4))
    ckpt, run = tmp_path / "checkpoints" / "step-1", tmp_path
    adapters.save(base.model, config, ckpt)
    adapters.save(base.model, config, run, same_as=ckpt)
    a, b = ckpt / adapters.ADAPTER_FILE, run / adapters.ADAPTER_FILE
    assert os.stat(a).st_ino == os.stat(b).st_ino
    want = adapters.trainable_weights(base.model, "lora")
    shutil.rmtree(ckpt)
    got = mx.load(str(b))
    assert set(got) == set(want) and all(mx.array_equal(got[k], want[k]).item() for k in want)
    assert adapters.read_config(run)["num_layers"] == config["num_layers"]


def test_validation_count_says_its_unit():
    from finetune_app.cli.progress import ConsolePrinter
    from finetune_app.core.training.events import ValReport

    out = io.StringIO()
    printer = ConsolePrinter(out)
    printer(ValReport(step=3, val_loss=0.6863, val_tokens=2, seconds=0.5, unit="pairs"))
    printer(ValReport(step=4, val_loss=1.5, val_tokens=40, seconds=0.5))
    assert "(2 pairs, " in out.getvalue() and "(40 tokens, " in out.getvalue()


def test_bad_config_file_value_names_the_file(tmp_path, capsys):
    from finetune_app.cli import main

    toml = tmp_path / "run.toml"
    toml.write_text("learning_rate = -5\nbatch_size = 0\n")
    args = ["train", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--output", str(tmp_path / "o"),
            "--config", str(toml)]
    assert main(args) == 5
    err = capsys.readouterr().err
    assert str(toml) in err and "learning_rate" in err and "batch_size" in err
    assert main(args + ["--batch-size", "2", "--learning-rate", "1e-4"]) == 3  # flags win; then: no model folder
    assert "run.toml" not in capsys.readouterr().err


def test_weights_read_on_a_thread_are_the_loaders(tiny_model):
    """load_base(read_later=True) on the main thread reads a text model's weights on a thread of
    their own (#16 startup2); after wait_for_weights they are exactly the eager load's. Off the main
    thread (MLX streams are thread-local) it loads eagerly, as before."""
    import threading

    from mlx.utils import tree_flatten

    from finetune_app.core.models import WeightRead, load_base

    folder = tiny_model("llama")
    eager = dict(tree_flatten(load_base(folder).model.parameters()))
    base = load_base(folder, read_later=True)
    assert isinstance(base.reading, WeightRead)
    base.wait_for_weights()
    assert base.reading is None
    got = dict(tree_flatten(base.model.parameters()))
    assert set(got) == set(eager) and all(mx.array_equal(got[k], eager[k]).item() for k in eager)
    off_main = {}
    t = threading.Thread(target=lambda: off_main.update(base=load_base(folder, read_later=True)))
    t.start()
    t.join()
    assert off_main["base"].reading is None


def _fake_torch(tmp_path):
    """A throwaway `torch` package first on the path that records being imported: (env, marker)."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "torch-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n__version__ = '0.0.1'\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env, marker


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_train_does_not_import_torch(family, tiny_model, instruction_data, shapes_data, tmp_path):
    """`finetune-app train` on a text model, or a VLM whose processor mlx-vlm builds the same with
    torch or not, keeps transformers from importing torch (#16 textwarm, vlmtorch: 2.6 s of the
    H200 host's start for torch alone; 11-18 s of a VLM run's start here with torch 2.14 +
    torchvision 0.29). The fake torch is found by plain transformers (so this test can fail), and
    the run finishes without importing it."""
    from tests.helpers import run_cli

    env, marker = _fake_torch(tmp_path)
    seen = subprocess.run([sys.executable, "-c", "from transformers.utils import import_utils as u; "
                           "print(u.is_torch_available())"], capture_output=True, text=True, timeout=300, env=env)
    assert seen.returncode == 0 and marker.is_file(), seen.stderr[-2000:]  # transformers finds this torch
    marker.unlink()
    data = instruction_data if family == "llama" else shapes_data
    out = run_cli("train", "--model", tiny_model(family), "--data", data, "--output", tmp_path / "run",
                  "--iters", 1, "--batch-size", 2, "--lora-rank", 4, "--sample-count", 0, "--val-batches", 1,
                  "--quiet", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "adapters.safetensors").is_file()
    assert not marker.exists(), f"the {family} run imported torch"
    assert "PyTorch was not found" not in out.stderr + out.stdout


def test_unlisted_vlm_keeps_torch(tmp_path):
    """A VLM type not in SAME_PROCESSOR_WITHOUT_TORCH may be served with transformers' torchvision
    image processor, so its training leaves torch visible (the pixels must stay the served ones)."""
    env, marker = _fake_torch(tmp_path)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llava_onevision", "vision_config": {}}')
    code = ("from finetune_app.cli.train import without_torch\n"
            f"without_torch({str(folder)!r})\n"
            "from transformers.utils import import_utils as u\n"
            "print(u.is_torch_available())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert marker.is_file(), "transformers did not import torch"


def test_listed_vlm_processors_do_not_depend_on_torch(tiny_model, monkeypatch):
    """Every VLM type trained with torch hidden gets, from mlx_vlm's processor loading (what
    `mlx_vlm.load` serves with), an image processor that torch cannot change: mlx-vlm's own class,
    or transformers' PIL back-end asked for by name (`use_fast=False` / backend="pil"); with torch
    installed, transformers' default would be the torchvision back-end, whose pixels differ. A
    family whose processor falls back to the default fails here."""
    from mlx_vlm.utils import load_config, load_image_processor, load_processor
    from transformers import AutoImageProcessor
    from transformers.image_processing_backends import PilBackend

    from finetune_app.core.families import SAME_PROCESSOR_WITHOUT_TORCH
    from finetune_app.testing.tiny_models import VLM_FAMILIES

    asked = []
    real = AutoImageProcessor.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        asked.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", classmethod(recording))
    covered = set()
    for family in sorted(VLM_FAMILIES):
        folder = tiny_model(family)
        model_type = load_config(folder)["model_type"]
        if model_type not in SAME_PROCESSOR_WITHOUT_TORCH:
            continue
        covered.add(model_type)
        asked.clear()
        image_processor = load_image_processor(folder)  # (imports the model's module: its processor patch)
        processor = load_processor(folder, True, eos_token_ids=None)
        ip = image_processor or getattr(processor, "image_processor", None) or processor
        assert all(k.get("use_fast") is False or k.get("backend") == "pil" for k in asked), (family, asked)
        assert isinstance(ip, PilBackend) or type(ip).__module__.startswith("mlx_vlm."), (family, type(ip))
    assert SAME_PROCESSOR_WITHOUT_TORCH - covered == {"fastvlm"}  # (mlx-vlm's alias of llava_qwen2)


def _served_classes(folders: dict) -> dict:
    """(in this process) family -> the outer and image processor classes load_base gives."""
    from finetune_app.core.models import load_base

    out = {}
    for family, folder in folders.items():
        processor = load_base(folder).processor
        ip = getattr(processor, "image_processor", None) or processor
        out[family] = [f"{type(x).__module__}.{type(x).__qualname__}" for x in (processor, ip)]
    return out


def test_listed_vlms_load_with_torch_hidden(tiny_model, tmp_path):
    """Every VLM type a training run hides torch for builds its processor through the run's own
    code (cli.train.without_torch, then load_base: mlx_vlm.load) with the hide active, and gets the
    classes a process without the hide gets: mlx-vlm's outer processor, and mlx-vlm's image
    processor or transformers' PIL one (#16 torchhide: on transformers 5.17 the hide made
    Idefics3 / SmolVLM fail to load, and LLaVA, Gemma 3, ... fall back to transformers' outer
    processors, because AutoImageProcessor was a placeholder without torch)."""
    import json

    from mlx_vlm.utils import load_config

    from finetune_app.core.patches.transformers_without_torch import pil_files_need_torch, serves_the_same
    from finetune_app.testing.tiny_models import VLM_FAMILIES

    folders = {f: tiny_model(f) for f in sorted(VLM_FAMILIES)}
    folders = {f: p for f, p in folders.items() if serves_the_same("vlm", load_config(p)["model_type"])}
    assert {"qwen2_vl", "pixtral", "deepseek_vl_v2"} <= set(folders)
    assert pil_files_need_torch() or {"idefics3", "smolvlm", "llava", "gemma3", "mllama"} <= set(folders)
    code = ("import json, sys\n"
            "from finetune_app.cli.train import without_torch\n"
            f"folders = {json.dumps({f: str(p) for f, p in folders.items()})}\n"
            "without_torch(next(iter(folders.values())))\n"
            "from transformers.utils import import_utils as u\n"
            "assert not u.is_torch_available() and 'transformers' in sys.modules\n"
            "from tests.test_startup_costs import _served_classes\n"
            "print(json.dumps(_served_classes(folders)))\n")
    env, marker = _fake_torch(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    hidden = json.loads(out.stdout.strip().splitlines()[-1])
    assert not marker.exists(), "the hide let transformers import torch"
    plain = _served_classes(folders)
    assert hidden == plain
    for family, (outer, image) in hidden.items():
        assert outer.startswith("mlx_vlm."), (family, outer)
        assert image.startswith("mlx_vlm.") or "image_processing_pil_" in image, (family, image)


def test_pil_files_need_torch_follows_transformers_rule():
    """transformers 5.17 takes any image-processing file that merely names TorchvisionBackend (the
    Idefics3 / SmolVLM PIL processors' docstrings, models/auto/image_processing_auto.py's lazy
    import) as needing torch + torchvision; 5.25 asks for a subclass. The check that decides
    whether the PIL-processor VLMs may hide torch reads the installed rule's source: it must agree
    with what that rule does to such a file, and with 5.17's text."""
    from transformers.utils import import_utils as iu

    from finetune_app.core.patches import transformers_without_torch as hidden

    pil_file = ('"""PIL image processor."""\nfrom ...image_processing_backends import PilBackend\n\n\n'
                'class XImageProcessorPil(PilBackend):\n    """Mirrors TorchvisionBackend.pad."""\n')
    rule = next(backends for check, backends in iu.BASE_FILE_REQUIREMENTS.items()
                if check("image_processing_pil_x", pil_file))
    assert hidden.pil_files_need_torch() == ("torch" in rule)
    rule_517 = ('    lambda name, content: "image_processing_" in name and "TorchvisionBackend" in content: (\n'
                '        "vision",\n        "torch",\n        "torchvision",\n    ),\n')
    assert hidden.pil_files_need_torch(rule_517)
    assert not hidden.pil_files_need_torch(
        '    lambda name, content: "image_processing_" in name and _TORCHVISION_BACKEND_SUBCLASS.search(content): (\n')


def test_pil_processor_vlms_keep_torch_where_transformers_needs_it(monkeypatch):
    """Where the installed transformers takes the PIL image-processing files as needing torch, a
    VLM served through transformers' PIL processor keeps torch (the hide would make its load fail
    or change its processor); mlx-vlm's own processors and text models still hide it."""
    from finetune_app.core.families import OWN_PROCESSOR_WITHOUT_TORCH, PIL_PROCESSOR_WITHOUT_TORCH
    from finetune_app.core.patches import transformers_without_torch as hidden

    for needs, pil_hidden in ((False, True), (True, False)):
        monkeypatch.setattr(hidden, "pil_files_need_torch", lambda source=None, needs=needs: needs)
        assert all(hidden.serves_the_same("vlm", t) == pil_hidden for t in PIL_PROCESSOR_WITHOUT_TORCH)
        assert all(hidden.serves_the_same("vlm", t) for t in OWN_PROCESSOR_WITHOUT_TORCH)
        assert hidden.serves_the_same("text", "llama") and not hidden.serves_the_same("vlm", "llava_onevision")


def test_rows_prepared_on_a_thread_while_this_one_reads(tiny_model):
    """Where the weights must be read on the main thread (GPU: WeightRead(threaded=False)), the
    data preparation runs on a thread meanwhile (#16 textwarm): the weights are then the eager
    load's, the work's value comes back, and its error is raised on the caller's thread."""
    import threading

    import pytest
    from mlx.utils import tree_flatten

    from finetune_app.core.models import WeightRead, load_base

    folder = tiny_model("llama")
    eager = dict(tree_flatten(load_base(folder).model.parameters()))
    base = load_base(folder, lazy=True)
    base.reading = WeightRead(base, threaded=False)
    assert base.while_reading(lambda: threading.current_thread().name) == "prepare-rows"
    assert base.reading is None
    got = dict(tree_flatten(base.model.parameters()))
    assert set(got) == set(eager) and all(mx.array_equal(got[k], eager[k]).item() for k in eager)
    base.reading = WeightRead(load_base(folder, lazy=True), threaded=False)
    with pytest.raises(ValueError, match="bad row"):
        base.while_reading(lambda: (_ for _ in ()).throw(ValueError("bad row")))
    assert base.while_reading(lambda: "here") == "here"  # nothing left to read: on this thread


def test_weights_read_ahead_are_the_loads_own_and_read_once(tiny_model, monkeypatch, tmp_path):
    """On a GPU the CLI starts reading a text model's weights before the imports (#16 readearly):
    load_base then builds the model from those very arrays through mlx-lm's loader (nothing read
    twice), equal to the plain load's; a damaged file starts no read and the load still says which
    file is damaged."""
    import shutil

    import mlx_lm.utils
    import pytest
    from mlx.utils import tree_flatten

    from finetune_app.core import models
    from finetune_app.core.errors import ModelError

    folder = tiny_model("llama")
    eager = dict(tree_flatten(models.load_base(folder).model.parameters()))
    monkeypatch.setattr(models, "reads_on_main_thread", lambda: True)  # the GPU's path, on this CPU
    assert models.read_ahead(folder)
    read = [a for arrays in models._READ_AHEAD[str(folder.resolve())].values() for a in arrays.values()]
    base = models.load_base(folder, read_later=True)
    assert not models._READ_AHEAD and mlx_lm.utils.mx is mx
    assert base.reading is not None and not base.reading.threaded
    base.wait_for_weights()
    got = dict(tree_flatten(base.model.parameters()))
    assert set(got) == set(eager) and all(mx.array_equal(got[k], eager[k]).item() for k in eager)
    assert all(any(v is a for a in read) for v in got.values())  # the arrays read ahead, not a second read

    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert not models.read_ahead(damaged) and not models._READ_AHEAD
    with pytest.raises(ModelError, match="model.safetensors"):
        models.load_base(damaged, read_later=True)


def test_vlm_weights_read_ahead_are_the_loads_own(tiny_model, monkeypatch):
    """A VLM's weights, read ahead on a GPU by the CLI (#16 vlmtorch), are the arrays mlx-vlm's
    eager load builds the model from (every file taken from the read, none read again), equal to
    the plain load's; mlx_vlm.utils gets its own mx back."""
    import mlx_vlm.utils
    from mlx.utils import tree_flatten

    from finetune_app.core import models

    folder = tiny_model("qwen2_vl")
    eager = dict(tree_flatten(models.load_base(folder).model.parameters()))
    monkeypatch.setattr(models, "reads_on_main_thread", lambda: True)  # the GPU's path, on this CPU
    assert models.read_ahead(folder, "vlm")
    files = models._READ_AHEAD[str(folder.resolve())]
    read = [a for arrays in files.values() for a in arrays.values()]
    base = models.load_base(folder, read_later=True)
    assert not models._READ_AHEAD and not files and mlx_vlm.utils.mx is mx  # every file handed over
    got = dict(tree_flatten(base.model.parameters()))
    assert set(got) == set(eager) and all(mx.array_equal(got[k], eager[k]).item() for k in eager)
    assert all(any(v is a for a in read) for v in got.values())  # the arrays read ahead, not a second read


def test_vlm_read_ahead_reads_only_the_files_mlx_vlm_loads(tiny_model, monkeypatch, tmp_path):
    """A sharded VLM folder (model.safetensors.index.json) with a stray model.safetensors beside
    its shards: the read ahead takes the index's shards only, as mlx-vlm's load_model does (the
    stray file would be read and held in device memory for nothing), and the load uses them all."""
    import json
    import shutil

    from mlx.utils import tree_flatten

    from finetune_app.core import models

    src = tiny_model("qwen2_vl")
    folder = tmp_path / "sharded"
    shutil.copytree(src, folder)
    weights = dict(mx.load(str(folder / "model.safetensors")))
    names = sorted(weights)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        mx.save_safetensors(str(folder / shard), {k: weights[k] for k in keys}, metadata={"format": "mlx"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    # model.safetensors stays: a leftover of an earlier save that mlx-vlm ignores beside an index
    monkeypatch.setattr(models, "reads_on_main_thread", lambda: True)
    assert models.read_ahead(folder, "vlm")
    files = models._READ_AHEAD[str(folder.resolve())]
    assert sorted(Path(f).name for f in files) == sorted(shards)
    base = models.load_base(folder, read_later=True)
    assert not files  # both shards handed to mlx-vlm's loader
    assert len(tree_flatten(base.model.parameters())) > 0


def test_read_ahead_imports_no_transformers(tiny_model):
    """On a GPU the CLI reads ahead before hiding torch from transformers: if the read's imports
    pulled transformers in, the hiding would come too late there only (no CPU run reads ahead)."""
    folder = tiny_model("qwen2_vl")
    code = ("import sys\n"
            "from finetune_app.core import models\n"
            "models.reads_on_main_thread = lambda: True\n"
            f"assert models.read_ahead({str(folder)!r}, 'vlm')\n"
            "print('transformers' in sys.modules, 'mlx_vlm' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_an_image_processor_transformers_cannot_build_asks_for_an_upgrade(tmp_path, monkeypatch):
    """transformers 5.17 without torch cannot build the Idefics3 / SmolVLM image processors (its
    PIL files are taken as needing torch): the error says which transformers, and to upgrade it
    (5.18 fixed the rule) or install torchvision, not to re-download the model."""
    from finetune_app.core.models import _load_failed

    exc = ValueError(f"Could not load any image processor class for {tmp_path}. The model configuration resolves "
                     "to the following image processor classes: pil: Idefics3ImageProcessorPil, torchvision: "
                     "Idefics3ImageProcessor. None of these classes could be imported. Missing optional "
                     "dependencies: torchvision.")
    from finetune_app.core.patches import transformers_without_torch as hide

    for needs_torch, advice in ((True, "5.18"), (False, "pip install torchvision")):  # 5.17's rule, 5.18's
        monkeypatch.setattr(hide, "pil_files_need_torch", lambda source=None, v=needs_torch: v)
        err = _load_failed(exc, tmp_path, "vlm", "idefics3")
        assert "could not build the image processor" in err.problem and "Idefics3ImageProcessorPil" in err.problem
        assert advice in err.fix and "torchvision" in err.fix and "re-download" not in err.fix
        assert ("5.18" in err.fix) == needs_torch
