"""The `slipstream` subcommands, one file each; slipstream/cli.py builds the parser and handles errors."""
