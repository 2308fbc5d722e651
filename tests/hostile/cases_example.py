"""Two sample cases showing the harness (the areas' own files hold the rest)."""

from __future__ import annotations

from hostile import case


@case("dataset", "missing-folder")
def _(env):
    env.expect("data", "check", env.tmp / "no-such-data", exit=4, says=["no-such-data"])
