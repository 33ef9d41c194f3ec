"""Reports: a pure function of the results store.

* ``reports.metrics``   column roles and the one table of metric directions;
* ``reports.aggregate`` ``load_records`` (store -> polars), ``aggregate`` (over seeds),
  ``problems`` (failed / diverged / unreadable runs, never dropped);
* ``reports.pareto``    ``pareto_mask``, vectorised, per group;
* ``reports.figures``   one plotly figure per function (fronts, scaling, router diagnostics);
* ``reports.html``      ``write_report``: one self-contained HTML page (plotly.js embedded);
* ``reports.scaling``   fitted quality-against-cost curves, compute multipliers, matches;
  ``reports.scaling_report`` their report section; ``reports.plan`` ``moe-harness plan``;
  ``reports.noise`` intervals for the claims check; ``reports.published`` the paper's points;
* ``reports.bench``     the 10,000-record report benchmark;
* ``reports.synthetic`` synthetic records for the benchmark and the tests.
"""
