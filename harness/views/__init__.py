"""Terminal views: what the CLI prints (rich tables and lines), one module per command."""
