"""The HTML page: ``sections`` (the one ordered list of sections), ``render`` (the one page
function), ``answer`` (the answer blocks), ``tables`` and ``html`` (the HTML pieces)."""
