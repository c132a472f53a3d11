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

# The pages live in views/, not pages/: a pages/ folder beside the entry script switches
# Streamlit to its older multipage mode for some runs, which skips this script (and its sidebar).
PAGES = {
    "predict": st.Page("views/predict.py", title="Predict", icon=":material/image_search:", default=True),
    "architecture": st.Page("views/architecture.py", title="Architecture", icon=":material/account_tree:"),
    "layer_explorer": st.Page("views/layer_explorer.py", title="Layer explorer", icon=":material/grid_view:"),
    "atlas": st.Page("views/atlas.py", title="Channel atlas", icon=":material/travel_explore:"),
    "attributions": st.Page("views/attributions.py", title="Attributions", icon=":material/center_focus_strong:"),
}

page = st.navigation(list(PAGES.values()))
widgets.restore_page(PAGES, page)  # a shared link: its page, its image (the page restores its own widgets)
widgets.restore_image()
widgets.sidebar()
widgets.publish_image()
page.run()
