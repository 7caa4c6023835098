"""One module per command; :mod:`prunecli.cli.app` registers them (no command imports the app)."""
