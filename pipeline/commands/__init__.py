"""One module per CLI command: ``configure(parser)`` declares arguments, ``run(args) -> int`` runs it."""
