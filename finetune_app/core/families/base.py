"""What the engine asks a model family; the only place (with its subclasses) that names one.

A family turns tokenised examples into one `Batch` for the step (`plan`), gives the objective the
logits of the supervised positions (`predictions`), computes frozen-tower features for the cache,
and says what export needs to know. The generic family (generic.py) drives any model through the
library's own forward; the others add a fast path (cached tower features, compiled step) or quirks.
"""

from __future__ import annotations


class Family:
    """Class attributes describe a family before any model is loaded (export, model picker)."""

    model_types: tuple[str, ...] = ()  # config.json model_type values this family drives
    names: dict[str, str] = {}  # model_type -> the name people know the family by
    vlm: bool = True  # reads images
    apple_app: bool = False  # Apple's FastVLM app (the mlx-swift export target) runs it
    swift_model_type: str | None = None  # what mlx-swift(-lm) wants in config.json, when it differs
    swift_processor: str | None = None  # processor_class MLXVLM picks its processor by
    layouts: dict[str, str] = {}  # serve target -> core/serving module replacing its layout here

    def __init__(self, base):
        self.base = base
        config = base.config
        self.image_token = config.get("image_token_index", config.get("image_token_id"))
        self.fast = False  # plan() builds the fast path's arrays (set by `start`)
        self.compiled = False  # the step may be compiled with mx.compile
        self.pack = False  # fast path: several examples per row (sequence packing)
        self.buckets = None  # fast path: the run's ShapePlan of (positions, supervised) sizes (trainer sets it)

    @classmethod
    def display_name(cls, model_type: str) -> str:
        return cls.names.get(model_type, model_type)

    # ---- what the data side needs -------------------------------------------------------------
    def image_features(self) -> int | None:
        """Positions one image placeholder expands into inside the model, when the model (not the
        processor) expands it; None when the token ids already hold every image position."""
        return None

    def sized_processor(self, layout):
        """(#16 vlmwarm) Where this run's pictures are needed once (the frozen-tower cache reads
        them in the first batch that meets them, never again), a callable (text, [(w, h), ...]) ->
        {"input_ids", image grids} that gives the processor's ids from picture sizes alone, so
        preparation need not decode any picture; None where pixels are needed up front."""
        return None

    # ---- training ------------------------------------------------------------------------------
    def start(self, cfg) -> None:
        """Choose the path for this run: fast (`self.fast`) where the family has one and the
        settings allow it, else the library's own forward."""

    def prepare_example(self, ex) -> None:
        """Once per example before training (the fast path names its images' cached features, which
        the first batch that needs them computes)."""

    def group_images(self, groups: list[list], reread) -> None:
        """Before training: which examples' images share a frozen-tower call (vision_cache.py
        `run_groups`); `reread` gives an example kept without pixels its pixels again."""

    def ready(self, ex) -> bool:
        """The example can be planned without its pixels (its tower features are cached), so an
        example whose images were dropped for memory need not be read again."""
        return False

    def plan(self, examples) -> "Batch":  # noqa: F821
        raise NotImplementedError

    def inputs(self, batch):
        """What the step passes to the objective: the host Batch, or a dict of device arrays (the
        fast path; a compiled step needs arrays as its inputs)."""
        return batch

    def predictions(self, model, inputs):
        """(logits [K, V], targets [K], weights [K]) for the positions that predict a token."""
        raise NotImplementedError

    def hidden_predictions(self, model, inputs):
        """(head owner, hidden [K, D], targets, weights) where the family can give the hidden states
        before the LM head (the fast path), else None."""
        return None

    def tower_features(self, model, pixel_values):
        """Frozen vision-tower output for the cache (families with a cacheable tower)."""
        raise NotImplementedError(f"{type(self).__name__} has no cacheable vision tower")
