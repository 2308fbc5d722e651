"""GRPO's side of a run, kept out of the trainer: the batches of a GRPO run are sampled, scored
and recorded answers instead of the dataset's rows.

`Rollouts(run)` builds the sampler (objectives/grpo.py's Rollout) from the run's settings; the
rows' answers to score against come from the dataset, read when first needed. Each batch's
answers and rewards go to the run folder's rewards.jsonl (rank 0); a training batch's reward
summary goes out as an ObjectiveReport of the step it trains, and the held-out batches of an
evaluation are summed up once it ends (`report_held_out`). GRPO runs on the library path
(sampled rows change length every step), so the family's fast path is switched off.
"""

from __future__ import annotations

from finetune_app.core import adapters, rewards, run_folder
from finetune_app.core.training.events import ObjectiveReport
from finetune_app.core.training.objectives import grpo


class Rollouts:
    def __init__(self, run):
        self.run = run
        cfg = run.cfg
        run.family.fast = run.family.compiled = False
        reward = rewards.parse(cfg.grpo_rewards, base_dir=rewards.data_dir(cfg.data))
        self._answers: dict[int, str] = {}
        self.rollout = grpo.Rollout(cfg, run.base, run.family, reward, self.answer_of)
        self._held_out: list = []  # this evaluation's (batch, scored answers)

    def answer_of(self, i: int) -> str:
        if i not in self._answers:
            self._answers[i] = self.run.data.dataset.sample(i).answer
        return self._answers[i]

    def units(self, example) -> int:
        """What one prompt counts for in the step's loss normaliser: its G sampled answers."""
        return self.run.cfg.grpo_group_size

    def batch(self, examples: list, split: str):
        run = self.run
        batch, sampled = self.rollout(examples)
        adapters.set_train_modes(run.base.model, run.cfg.fine_tune_type)
        step = run.state.step + (1 if split == "train" else 0)  # the step this batch trains / follows
        if run.world.is_main:
            try:
                run_folder.append_rewards(run.run_dir, [
                    {"step": step, "split": split, "index": s.index, "completion": s.text, "reward": s.reward, **s.parts}
                    for s in sampled])
            except OSError as exc:
                raise run_folder.unwritable(run.run_dir, exc) from None
        if split == "train":
            run.emit(ObjectiveReport(step=step, metrics=grpo.summary([batch], sampled, run.cfg.grpo_group_size)))
        else:
            self._held_out.append((batch, sampled))
        return batch

    def report_held_out(self) -> None:
        """After an evaluation: the held-out reward of the answers sampled for it (this rank's share)."""
        if not self._held_out:
            return
        batches, sampled = [b for b, _ in self._held_out], [x for _, s in self._held_out for x in s]
        self._held_out = []
        self.run.emit(ObjectiveReport(step=self.run.state.step, split="valid",
                                      metrics=grpo.summary(batches, sampled, self.run.cfg.grpo_group_size)))
