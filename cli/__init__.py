"""The `routinely` command: the top floor. It drives the library (`routinely/`) and starts the
web and worker processes; nothing in `routinely/`, `app/` or `workers/` imports it.

One module per group of commands, each with a `register(sub)` that adds its subcommands;
`cli.main` collects them. Errors: one line on stderr, exit 1."""
