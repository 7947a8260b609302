"""Subcommand modules of the superserve CLI (each: add_arguments(parser), run(args) -> int)."""
