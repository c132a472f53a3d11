"""Xception Explorer: the Streamlit app (talks to the API over HTTP only).

``ui/app.py`` is the entry script (one file per page under ``ui/views/``),
``ui/client.py`` the HTTP client, ``ui/session.py`` the shared state and cached API
calls, ``ui/widgets.py`` what every page draws. It imports neither PyTorch nor
``xception_core``: sample images and the spectrum come from the API too.
``xception-demo ui`` / ``up`` start it (``xception_demo/launch.py``).
"""
