"""Reports: a pure function of the results store. One pipeline, each layer importing only the
ones above it in this list:

* ``reports.metrics``   column roles and the one table of metric directions;
* ``reports.labels``    numbers, configurations and routers as people read them;
* ``reports.records``   ``load_records`` (store -> polars), ``records_frame``; ``upgrade``, the
  one place where old records gain the derived fields the harness now writes;
* ``reports.aggregate`` ``aggregate`` (over seeds), ``problems``, and ``summarise``: the one
  aggregate, with the row index and the report's columns, that everything below reads;
* ``reports.pareto``    ``pareto_mask``, vectorised, per group;
* ``reports.analyses``  pure functions returning data: ``scaling`` (fitted curves, compute
  multipliers, matches), ``noise`` (intervals), ``claims`` (the paper's claims checked),
  ``verdict`` (what is best), ``fits`` (the fits' tables), ``plan`` (``moe-harness plan``),
  ``findings`` (all of it, computed once, for the page and ``report --json``);
* ``reports.figures``   plotly figures by family: ``pareto``, ``scaling``, ``fits``,
  ``routers``, ``paper``, ``training``, ``tuning`` (``common``: what they share);
* ``reports.page``      the HTML page: ``sections.SECTIONS`` (the one ordered list of
  sections), ``render`` (the one page function, ``render_report`` / ``write_report``),
  ``answer``, ``tables``, ``html``;
* ``reports.build``     ``moe-harness report``: store in, page (and ``--json``) out;
  ``reports.export`` tables and MLflow;
  ``reports.published`` the paper's points; ``reports.synthetic`` synthetic records.
"""
