"""The command line: what each ``ieskips`` sub-command does (``cli.py`` parses)."""
