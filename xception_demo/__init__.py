"""The ``xception-demo`` command line: core commands, plus starting the API and the UI."""
