"""``python -m ccci_dist``: the ccci-dist CLI."""

from ccci_dist.cli import main

main()
