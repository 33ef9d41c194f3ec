"""The paper's model table (its Tables 1 and 8): each model's printed figures beside ours.

:data:`PAPER_MODELS` holds the paper's numbers (data, with our spec of each model);
``harness.runtime.counting.paper_table`` counts our parameters, eval GFLOP/img and training
exaFLOP of each and puts them beside the paper's (``moe-harness inspect --paper``).
The gaps are explained in docs/paper-costs.md.
"""

from __future__ import annotations

from dataclasses import dataclass

JFT_CLASSES = 29_593
"""Classes of the JFT head the paper's models carry (≈29.6k); it moves parameters, not
FLOPs (0.1%)."""
PAPER_BATCH = 4096


@dataclass(frozen=True)
class PaperModel:
    """One row of the paper's Tables 1/8: its printed figures and our spec of the model."""

    label: str
    spec: str
    params: float
    eval_gflops: float  # per image, 2 FLOPs per multiply-add
    steps: float
    train_exaflops_printed: float | None = None  # the paper's convention: 3 × MACs × images


PAPER_MODELS = (
    PaperModel("ViT S/16", "vit-s/16", 33e6, 9.2, 4e6, 227.0),
    PaperModel("Soft MoE S/16 128E", "vit-s/16:soft:e128:s1", 933e6, 8.6, 4e6),
    PaperModel("Soft MoE S/14 256E", "vit-s/14:soft:e256:s1", 1.8e9, 13.2, 4e6),
    PaperModel("ViT B/16", "vit-b/16", 108e6, 35.1, 4e6),
    PaperModel("Soft MoE B/16 128E", "vit-b/16:soft:e128:s1", 3.7e9, 32.0, 4e6),
    PaperModel("ViT L/16", "vit-l/16", 333e6, 122.9, 4e6),
    PaperModel("Soft MoE L/16 128E", "vit-l/16:soft:e128:s1", 13.1e9, 111.1, 4e6),
    PaperModel("ViT H/14", "vit-h/14", 669e6, 334.2, 2e6),
    PaperModel("Soft MoE H/14 128E", "vit-h/14:soft:e128:s1", 27.3e9, 284.6, 2e6),
    PaperModel("Soft MoE H/14 256E", "vit-h/14:soft:e256:s1", 54.1e9, 342.4, 2e6),
)
"""The paper's Tables 1 and 8. Only ViT S/16's training exaFLOP (227) is taken from the
paper; for the other rows the table shows the figure the paper's own convention
gives from its printed GFLOP column, labelled as such."""


def parse_paper_spec(spec: str):
    """The paper's configuration of a spec: 224 px, GAP head, JFT classes, MoE in the
    second half of the blocks (our default placement), 1 slot per expert."""
    from harness.spec.model import parse_model_spec

    return parse_model_spec(spec, num_classes=JFT_CLASSES, pool="gap", image_size=224)


