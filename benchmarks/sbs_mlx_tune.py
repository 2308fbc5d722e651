"""mlx-tune's SFT as a user writes it (its Unsloth-style Python API: no command line), for side_by_side.py.

    python benchmarks/peak_probe.py -m sbs_mlx_tune --model M --data D --output O --steps N \
        --batch-size 4 --lr 1e-4 --rank 16 --max-length 2048 --report-every 5

(benchmarks/ on PYTHONPATH; side_by_side.py starts it with the interpreter of --mlx-tune-python.)
The same work as the other tools: `FastLanguageModel.from_pretrained` + `get_peft_model` (rank r,
alpha r so scale 1, dropout 0, its default targets q/k/v/o/gate/up/down on every layer),
`SFTTrainer` with a constant learning rate, AdamW without weight decay, `max_steps` = the harness's
ceil(rows / batch) (mlx-tune's own epoch count floors rows / batch), one validation batch on the
data's valid.jsonl (its default copies train.jsonl), no checkpoints (steps_per_save 10^9),
`train_on_responses_only` (mlx-lm's `mask_prompt`), seed 0, then its own save: the trainer writes
adapters.safetensors + adapter_config.json. Rows are read from train.jsonl as a list of dicts
(what the trainer accepts; a `datasets.load_dataset` call would add Arrow caching to its time).
mlx-tune falls back silently to a `mlx_lm.lora` subprocess when its native loop raises; that would
time another tool, so the fallback is replaced by an error here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HUGE = 10**9


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--model", "--data", "--output"):
        p.add_argument(flag, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--report-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)

    import mlx.core as mx
    import numpy as np
    from mlx_tune import FastLanguageModel, SFTConfig, SFTTrainer, train_on_responses_only

    np.random.seed(a.seed)  # what `mlx_lm lora` seeds (batch order), and MLX's (LoRA init)
    mx.random.seed(a.seed)
    model, tokenizer = FastLanguageModel.from_pretrained(a.model, max_seq_length=a.max_length)
    model = FastLanguageModel.get_peft_model(model, r=a.rank, lora_alpha=a.rank, lora_dropout=0.0)
    out = Path(a.output)
    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=a.batch_size,
                       gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="constant",
                       warmup_steps=0, max_steps=a.steps, logging_steps=a.report_every, save_steps=HUGE,
                       steps_per_eval=HUGE, val_batches=1, weight_decay=0.0, max_seq_length=a.max_length)
    data = Path(a.data)
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows(data / "train.jsonl"),
                         eval_dataset=rows(data / "valid.jsonl"), args=config,
                         adapter_path=str(out.resolve()))
    trainer = train_on_responses_only(trainer)

    def no_fallback():
        raise RuntimeError("mlx-tune's native training failed (see above); its mlx_lm.lora fallback is not timed")

    trainer._train_subprocess = no_fallback
    result = trainer.train()
    if not (out / "adapters.safetensors").is_file():
        raise RuntimeError(f"mlx-tune returned {result!r} without writing {out / 'adapters.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
