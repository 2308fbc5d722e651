"""Test and demo support (tiny random-weight models built offline); not imported by the engine."""

# The tiny model family the demo trains (`finetune-app demo`, the welcome screen's demo): Qwen2-VL,
# whose centred-shapes task is measured in docs/engine.md.
DEMO_FAMILY = "qwen2_vl"
