"""Xception Explorer REST API (FastAPI). Entry points: :func:`api.main.create_app`, :func:`api.main.run`."""
