"""Subcommands of the `openvla-ros` CLI; each module exposes `add_arguments(parser)` and `run(args)`."""
