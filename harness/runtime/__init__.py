"""What runs a run: ``execute`` (run.py), training, counting and measuring a built model,
the timing protocol, the process group and layouts (parallel/), trackers, checks of the
machine.
"""
