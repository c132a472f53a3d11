"""Xception Explorer: the Streamlit app (talks to the API over HTTP only).

``ui/app.py`` is the entry script (one file per page under ``ui/views/``),
``ui/client.py`` the HTTP client, ``ui/launch.py`` starts the app (``run_ui``)
or the API and the app together (``run_up``).
"""
