"""A DPO run killed with SIGKILL and resumed reproduces the uninterrupted run's per-step losses and
preference metrics exactly (issue 17): the reference log-probs (base, adapter switched off) are
recomputed per pair on resume, alone, so they equal the first run's."""


from finetune_app.core.training.events import MetricsLog
from finetune_app.testing.preference_tasks import make_format_preferences
from helpers import popen_cli, run_cli, sigkill_between_checkpoints

STEPS = 12


def train_args(model, data, out):
    return ["train", "--model", model, "--data", data, "--output", out, "--iters", STEPS, "--batch-size", 2,
            "--objective", "dpo", "--beta", "0.2", "--learning-rate", "2e-3", "--lora-rank", 4,
            "--lora-dropout", "0.1", "--warmup-steps", 2, "--grad-accumulation", 2, "--steps-per-report", 1,
            "--steps-per-eval", 100, "--save-every", 4, "--sample-count", 0, "--seed", 3, "--quiet"]


def reports(run_dir):
    rows = [r for r in MetricsLog.read(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    return {r["step"]: (r["loss"], r["learning_rate"], r["metrics"]) for r in rows}


def test_dpo_sigkill_and_resume_reproduces_losses(tiny_model, tmp_path):
    model = tiny_model("llama")
    data = make_format_preferences(tmp_path / "pairs", n_train=24, n_valid=4)
    ref_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    done = run_cli(*train_args(model, data, ref_dir))
    assert done.returncode == 0, done.stderr
    reference = reports(ref_dir)
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert set(reference[1][2]) >= {"reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"}

    proc = popen_cli(*train_args(model, data, killed_dir))
    sigkill_between_checkpoints(proc, killed_dir, 4, 5)  # after step 4's checkpoint, before the end
    assert 5 <= max(reports(killed_dir)) < STEPS

    resumed = run_cli("train", "--resume", killed_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from step-" in resumed.stderr
    after = reports(killed_dir)
    assert sorted(after) == list(range(1, STEPS + 1)), "every step appears once"
    assert after == reference, "per-step losses, learning rates and preference metrics equal the uninterrupted run's"
