"""Settings of the app, read from the environment."""

#: The API base URL the app talks to (``xception-demo ui --api-url`` sets it).
API_URL_ENV = "XCEPTION_UI_API_URL"
#: Sent as X-API-Key when the API requires a key.
API_KEY_ENV = "XCEPTION_UI_API_KEY"
DEFAULT_API_URL = "http://127.0.0.1:8000"
