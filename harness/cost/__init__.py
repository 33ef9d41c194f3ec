"""Cost from shapes alone: closed-form FLOPs and parameters, GPU-hours, the memory plan,
accelerator peaks and the paper's published costs. Torch-free.
"""
