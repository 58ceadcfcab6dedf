"""`python -m alignflow.flows.cli`: the `alignflow` command without its console script."""

from alignflow.flows.cli import main

main()
