"""The ``xception-demo`` command line: ``cli.py`` assembles the parser from one module per
command group (``info``, ``weights``, ``predict``, ``lab``, ``serve``, ``export``);
``launch.py`` starts the API and the UI."""

#: The program's name, as the console script installs it.
PROG = "xception-demo"
