"""The text step's compiled shapes and padding, simulated on the host (#16): how many distinct
(positions M, supervised K) shapes one epoch of the fast path traces, and its padding efficiency
(real tokens / padded tokens; for ours also of the
LM head: supervised positions / planned K), ours against mlx-lm's batching (global length sort, padded to
multiples of 32). Reads a {"messages": [...]} train.jsonl and the model folder's tokenizer, e.g.
side_by_side.py's text data:

    python benchmarks/shape_sim.py --model WORK/text-tiny/model --data WORK/text-tiny/data-256-448
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def lengths(model: str, data: str) -> tuple[list[int], list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    full_n, sup_n = [], []
    for line in open(Path(data) / "train.jsonl"):
        m = json.loads(line)["messages"]
        full = list(tok.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"])
        prompt = list(tok.apply_chat_template(m[:-1], tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"])
        full_n.append(len(full))
        sup_n.append(len(full) - len(prompt))
    return full_n, sup_n


def ours(L, K, batch_size: int, seed: int = 0, epochs: int = 1) -> dict:
    from finetune_app.core.data.batching import epoch_batches
    from finetune_app.core.training.batch import ShapePlan

    first = epoch_batches(L, batch_size, seed=seed, epoch=0)
    plan = ShapePlan([(len(b), max(L[i] for i in b), sum(K[i] for i in b)) for b in first])
    shapes, real, padded, sup, sup_padded = [], 0, 0, 0, 0
    for epoch in range(epochs):
        for b in epoch_batches(L, batch_size, seed=seed, epoch=epoch):
            M, k = plan(max(L[i] for i in b), sum(K[i] for i in b))
            shapes.append((len(b), M, k))
            real += sum(L[i] for i in b)
            padded += len(b) * M
            sup += sum(K[i] for i in b)
            sup_padded += k
    return {"batches": len(shapes), "shapes": len(set(shapes)), "padding_efficiency": round(real / padded, 3),
            "head_efficiency": round(sup / sup_padded, 3), "plan": plan.shapes}


def mlx_lm(L, batch_size: int) -> dict:
    idx = sorted(range(len(L)), key=lambda i: L[i])
    batches = [idx[i:i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]
    sizes = [-(-max(L[i] for i in b) // 32) * 32 for b in batches]
    real = sum(L[i] for b in batches for i in b)
    return {"batches": len(batches), "shapes": len(set(sizes)),
            "padding_efficiency": round(real / sum(batch_size * s for s in sizes), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="folder with train.jsonl")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    a = p.parse_args()
    L, K = lengths(a.model, a.data)
    print(json.dumps({"rows": len(L), "ours": ours(L, K, a.batch_size, epochs=a.epochs),
                      "mlx_lm": mlx_lm(L, a.batch_size)}))


if __name__ == "__main__":
    main()
