"""Terminal views of the CLI (rich tables and live progress) of what the harness computes, one
module per subject: ``cost`` (``inspect``), ``bench`` (``bench layers/train/data``), ``runs``
(the dry-run plan, ``status``), ``memory`` (the dry run's memory plan), ``progress`` (a sweep's
live display) and ``tune`` (``tune --show``, the trials' live display). They print what the
commands hand them and compute nothing a report needs again.
"""
