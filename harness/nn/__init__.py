"""The neural layers: the ViT, attention backends and the MoE layers (torch).
"""
