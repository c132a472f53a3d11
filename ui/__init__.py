"""Xception Explorer: the Streamlit app (talks to the API over HTTP only).

``ui/app.py`` is the entry script (one file per page under ``ui/pages/``),
``ui/client.py`` the HTTP client, ``ui/launch.py`` starts the app (``run_ui``)
or the API and the app together (``run_up``).
"""

#: The API base URL the app talks to.
API_URL_ENV = "XCEPTION_UI_API_URL"
#: Sent as X-API-Key when the API requires a key.
API_KEY_ENV = "XCEPTION_UI_API_KEY"
DEFAULT_API_URL = "http://127.0.0.1:8000"
