"""The torch-free spec layer: study files, run specs, the router registry and its rules,
model shapes and placement. Nothing here imports torch (a test imports it with torch blocked).
"""
