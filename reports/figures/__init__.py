"""Plotly figures, one module per family, one function per figure: each takes the aggregate
(``reports.aggregate.summarise``) or the records and returns a ``go.Figure``, or ``None`` when
the records hold nothing to draw. ``common`` holds what they share (hover texts, colours,
axes)."""
