"""The collapsible "How this works" panel every tab shows (issue 12).

Each tab keeps its own text in a module-level ``HOW`` constant (a few sentences and the one formula
the tab makes visible, in plain Unicode) and renders it with :func:`how_panel`.
"""

from __future__ import annotations

import gradio as gr

TITLE = "How this works"


def how_panel(text: str, elem_id: str) -> gr.Accordion:
    """Render ``text`` in a closed "How this works" accordion; call it inside a Blocks/Tab context.

    The accordion gets ``elem_id`` (by convention ``"<tab>-how"``) and the Markdown inside it
    ``elem_id + "-text"``. Formulas are written in Unicode (x̂₀, ε_θ, ‖·‖), so LaTeX rendering is off:
    a ``$`` in the text stays a dollar sign.
    """
    with gr.Accordion(TITLE, open=False, elem_id=elem_id) as panel:
        gr.Markdown(text, latex_delimiters=[], elem_id=f"{elem_id}-text")
    return panel
