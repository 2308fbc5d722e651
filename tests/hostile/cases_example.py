"""Two sample cases showing the harness (the areas' own files hold the rest)."""

from __future__ import annotations

from hostile import case


@case("model", "config-is-a-list")
def _(env):
    model = env.copy(env.tiny_model("qwen2"), "model")
    (model / "config.json").write_text("[1, 2, 3]")
    env.expect("generate", "--model", model, "hello", exit=3, says=["config.json"])
