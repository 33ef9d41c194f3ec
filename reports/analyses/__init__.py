"""The analyses of the aggregated records: pure functions that return data (numbers, verdicts,
rows of text), never HTML; ``reports.page`` renders them."""
