"""The ``ballast`` command line: thin Typer shells over the libraries."""
