"""Xception Explorer -- the Streamlit app (entry script).

Run it with ``xception-demo ui --api-url URL`` (or ``streamlit run ui/app.py`` with
``XCEPTION_UI_API_URL`` set). It talks to the API over HTTP only (``ui/client.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # `streamlit run ui/app.py` from a checkout: make `ui` importable
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from ui import widgets  # noqa: E402

st.set_page_config(page_title="Xception Explorer", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("pages/1_Predict.py", title="Predict", icon=":material/image_search:", default=True),
    st.Page("pages/2_Architecture.py", title="Architecture", icon=":material/account_tree:"),
    st.Page("pages/3_Layer_explorer.py", title="Layer explorer", icon=":material/grid_view:"),
    st.Page("pages/4_Attributions.py", title="Attributions", icon=":material/center_focus_strong:"),
]

page = st.navigation(PAGES)
widgets.sidebar()
page.run()
