"""``python -m harness.cli``: the ``moe-harness`` command."""

from harness.cli import main

if __name__ == "__main__":
    main()
