"""Terminal views of the CLI (rich tables and live progress), one module per subject:
``runs`` (the dry-run plan, ``status``), ``progress`` (a sweep's live display) and ``tune``
(``tune --show``, the trials' live display). They read the store and what the commands hand
them; they compute nothing that a report would need again.
"""
