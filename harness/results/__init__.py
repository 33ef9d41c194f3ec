"""The results store (records, history, locks, the study folder's layout) and the tuning
summary it keeps. Torch-free.
"""
