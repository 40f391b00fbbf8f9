"""One module per `ifcn <command>`: `get_args_parser()` and `main(args)`, nothing else.

A command parses its flags, reads the run's config and calls the library; `ifcn.cli` lists the
commands. No library module imports one of these.
"""
