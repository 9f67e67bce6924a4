"""`python -m cli ARGS`: the same as `routinely ARGS` (the worker processes `up` starts use it)."""
from cli.main import main

main()
