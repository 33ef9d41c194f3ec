"""Terminal views (rich tables) of what the harness computes; the CLI prints them."""
