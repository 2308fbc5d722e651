"""GRPO's side of a run, kept out of the trainer: the batches of a GRPO run are sampled, scored
and recorded answers instead of the dataset's rows.

`Rollouts(run)` builds the sampler (objectives/grpo.py's Rollout) from the run's settings; the
rows' answers to score against come from the dataset, read when first needed. A prompt's G
answers are sampled from a seed of (seed, step, row), so they are the same whichever process or
batch the prompt lands in. Data parallel: each process samples its shard of the batch (generation
is sharded), the step all-sums the gradients, and rank 0 gathers every process's answers and
rewards (all_gather) to record them all in rewards.jsonl and report them: a training batch's
summary as an ObjectiveReport of the step it trains, an evaluation's held-out answers once it ends
(`report_held_out`). GRPO runs on the library path (sampled rows change length every step), so
the family's fast path is switched off.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from finetune_app.core import adapters, rewards, run_folder
from finetune_app.core.training.events import ObjectiveReport
from finetune_app.core.training.loop import step_seed
from finetune_app.core.training.objectives import grpo


class Rollouts:
    def __init__(self, run):
        self.run = run
        cfg = run.cfg
        run.family.fast = run.family.compiled = False
        self.reward = rewards.parse(cfg.grpo_rewards, base_dir=rewards.data_dir(cfg.data))
        self._answers: dict[int, str] = {}
        self.rollout = grpo.Rollout(cfg, run.base, run.family, self.reward, self.answer_of)
        self._held_out: list = []  # this evaluation's scored answers (this process's)

    def answer_of(self, i: int) -> str:
        if i not in self._answers:
            self._answers[i] = self.run.data.dataset.sample(i).answer
        return self._answers[i]

    def units(self, example) -> int:
        """What one prompt counts for in the step's loss normaliser: its G sampled answers."""
        return self.run.cfg.grpo_group_size

    def batch(self, examples: list, split: str):
        run, cfg = self.run, self.run.cfg
        step = run.state.step + (1 if split == "train" else 0)  # the step this batch trains / follows
        salt = step if split == "train" else -1 - step  # held-out answers: a stream of their own
        batch, sampled = self.rollout(examples, seed_of=lambda ex: step_seed(step_seed(cfg.seed, salt), ex.index))
        mx.random.seed(step_seed(cfg.seed, run.state.step))  # what follows (dropout) as if nothing was sampled
        adapters.set_train_modes(run.base.model, cfg.fine_tune_type)
        if split == "train":
            everyone = self.gather(sampled)
            self.record(step, split, everyone)
            if run.world.is_main:
                run.emit(ObjectiveReport(step=step, metrics=grpo.summary(everyone, cfg.grpo_group_size)))
        else:
            self._held_out += sampled
        return batch

    def report_held_out(self) -> None:
        """After an evaluation (every process calls it): the held-out reward of every process's answers."""
        run = self.run
        if not self._held_out and not run.world.distributed:
            return
        everyone = self.gather(self._held_out)
        self._held_out = []
        self.record(run.state.step, "valid", everyone)
        if everyone and run.world.is_main:
            run.emit(ObjectiveReport(step=run.state.step, split="valid",
                                     metrics=grpo.summary(everyone, run.cfg.grpo_group_size)))

    def record(self, step: int, split: str, sampled: list) -> None:
        run = self.run
        if not run.world.is_main or not sampled:
            return
        try:
            run_folder.append_rewards(run.run_dir, [
                {"step": step, "split": split, "index": s.index, "completion": s.text, "reward": s.reward, **s.parts}
                for s in sampled])
        except OSError as exc:
            raise run_folder.unwritable(run.run_dir, exc) from None

    # ---- data parallel -------------------------------------------------------------------------------
    def gather(self, sampled: list) -> list:
        """Every process's live answers, in rank order (this process's alone when there is one).
        Each answer travels as one float32 row: index, reward, KL, length, the reward's terms, the
        tokens (the text is decoded again on arrival)."""
        world = self.run.world
        live = [s for s in sampled if s.live]
        if not world.distributed:
            return live
        names = [t.name for t in self.reward.terms]
        T = self.run.cfg.grpo_max_tokens
        width = 4 + len(names) + T
        local = np.full((len(live), width), -1.0, np.float32)
        for k, s in enumerate(live):
            local[k, :4] = (s.index, s.reward, np.nan if s.kl is None else s.kl, len(s.tokens))
            local[k, 4:4 + len(names)] = [s.parts[n] for n in names]
            local[k, 4 + len(names):4 + len(names) + len(s.tokens)] = s.tokens
        with self.run.dp.collective("gathering GRPO's sampled answers"):
            counts = world.gather(mx.array([len(live)], mx.int32))
            mx.eval(counts)
            counts = [int(c) for c in np.array(counts)]
            rows = max(1, max(counts))
            padded = np.full((rows, width), -1.0, np.float32)
            padded[:len(live)] = local
            every = world.gather(mx.array(padded))
            mx.eval(every)
        every = np.array(every).reshape(world.size, rows, width)
        tok, eos = self.run.base.tokenizer, self.rollout.eos
        out = []
        for r, n in enumerate(counts):
            for row in every[r, :n]:
                if r == world.rank:
                    continue
                tokens = [int(t) for t in row[4 + len(names):4 + len(names) + int(row[3])]]
                out.append(grpo.Sampled(int(row[0]), tokens, tok.decode([t for t in tokens if t not in eos]),
                                        float(row[1]), {m: float(v) for m, v in zip(names, row[4:4 + len(names)])},
                                        True, None if np.isnan(row[2]) else float(row[2])))
            if r == world.rank:
                out += live
        return out
