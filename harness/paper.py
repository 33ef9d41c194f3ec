"""The paper's model table (its Tables 1 and 8): each model's printed figures beside ours.

:data:`PAPER_MODELS` holds the paper's numbers (data, with our spec of each model);
:func:`paper_table` counts our parameters, eval GFLOP/img and training exaFLOP of each and
puts them beside the paper's (``moe-harness inspect --paper``; ``harness.views.cost`` prints
it). The gaps are explained in docs/paper-costs.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.cost import closed_form_params

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


def paper_table(counter: str = "meta", max_build_params: float = 1e9) -> list[dict]:
    """Our parameters, eval GFLOP/img and training exaFLOP for each model of the paper's
    table, beside the paper's figures and the ratios (ours / paper).

    ``counter``: ``"meta"`` (default) builds every model on the ``meta`` device (no memory)
    and counts its parameters and FLOPs there (``FlopCounterMode``); ``"fvcore"`` builds the
    models with at most ``max_build_params`` parameters on the CPU and counts them with
    fvcore, the others on ``meta``; ``"analytic"`` uses the closed forms only. Every row
    also carries the closed-form figures and says how it was counted.
    """
    from harness.flops import analytic_flops, train_exaflops

    rows = []
    for paper in PAPER_MODELS:
        cfg = parse_paper_spec(paper.spec)
        analytic = closed_form_params(cfg)["params_total"], analytic_flops(cfg).gflops
        params, gflops, counted_by = _count_paper_model(cfg, counter, max_build_params,
                                                        analytic)
        images = paper.steps * PAPER_BATCH
        ours = train_exaflops(gflops, images)
        if paper.train_exaflops_printed is not None:
            paper_ef, source = paper.train_exaflops_printed, "printed"
        else:
            paper_ef = train_exaflops(paper.eval_gflops, images)["train_exaflops_paper"]
            source = "from its GFLOP column"
        rows.append({
            "model": paper.label,
            "spec": cfg.spec,
            "counted_by": counted_by,
            "params": params,
            "params_analytic": analytic[0],
            "params_paper": paper.params,
            "params_ratio": params / paper.params,
            "gflops_per_image": gflops,
            "gflops_analytic": analytic[1],
            "gflops_paper": paper.eval_gflops,
            "gflops_ratio": gflops / paper.eval_gflops,
            "images_seen": images,
            "train_exaflops": ours["train_exaflops"],
            "train_exaflops_paper_convention": ours["train_exaflops_paper"],
            "train_exaflops_paper": paper_ef,
            "train_exaflops_paper_source": source,
            "train_exaflops_ratio": ours["train_exaflops_paper"] / paper_ef,
        })
    return rows


def parse_paper_spec(spec: str):
    """The paper's configuration of a spec: 224 px, GAP head, JFT classes, MoE in the
    second half of the blocks (our default placement), 1 slot per expert."""
    from harness.models import parse_model_spec

    return parse_model_spec(spec, num_classes=JFT_CLASSES, pool="gap", image_size=224)


def _count_paper_model(cfg, counter: str, max_build_params: float, analytic):
    import torch

    from harness.flops import fvcore_flops, torch_flops
    from harness.models import build

    if counter == "analytic":
        return *analytic, "analytic"
    if counter not in ("meta", "fvcore"):
        raise ValueError(f"unknown counter {counter!r}; allowed: meta, fvcore, analytic")
    device = "cpu" if counter == "fvcore" and analytic[0] <= max_build_params else "meta"
    with torch.device(device):
        model = build(cfg)
    images = torch.randn(1, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    params = sum(p.numel() for p in model.parameters())
    if device == "cpu":
        return params, fvcore_flops(model, images).gflops, "fvcore (built on CPU)"
    return params, torch_flops(model, images).gflops, "FlopCounterMode on meta"
