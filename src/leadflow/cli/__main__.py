"""``python -m leadflow.cli``: the same as the ``leadflow`` console script."""

from leadflow.cli import main

main()
