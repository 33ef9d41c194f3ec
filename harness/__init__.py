"""moe-harness: measure Soft MoE against sparse MoEs and dense ViTs, with numbers you can trust."""

__version__ = "0.1.0"
