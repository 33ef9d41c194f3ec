"""Every benchmark behind ``moe-harness bench``: layers, training, data, all-to-all,
trackers, the report. One module per benchmark.
"""
