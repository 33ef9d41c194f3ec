"""soft-moe-pytorch (lucidrains), the reference the layer benchmark times our Soft MoE against:
an optional dependency (``pip install 'moe-harness[bench]'``)."""

from __future__ import annotations


def reference_soft_moe(dim: int, num_experts: int, slots: int, hidden: int):
    """soft-moe-pytorch's SoftMoE in our configuration, or None if it is not installed.

    Matched: dim, num_experts, slots per expert, expert hidden = ``hidden`` (expert_mult =
    hidden / dim), exact GELU, no dropout. Different by design: its normalisation is an
    RMSNorm (l2-normalise × sqrt(dim) × a learned gain) applied to x *before* dispatch (so
    slots mix normalised tokens) and to the slot embeddings, where ours L2-normalises x and
    Φ only inside the logits, with one learned scale. ``offload_unused_experts_to_cpu`` is
    off (on one device it only adds a ``.to()`` per expert per call).
    """
    try:
        from soft_moe_pytorch import SoftMoE as RefSoftMoE
    except ImportError:
        return None
    return RefSoftMoE(dim, num_slots=slots, num_experts=num_experts, expert_mult=hidden / dim,
                      offload_unused_experts_to_cpu=False, is_distributed=False)
