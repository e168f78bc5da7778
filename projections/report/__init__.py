"""Self-contained HTML report for analysts (written by `leadflow report --html FILE`).

One page, no scripts, no external fonts, styles or images: the charts are inline SVG drawn
here. The output depends only on the read models, so the same data gives the same bytes
(no generation time is printed). Every text that comes from data is escaped.

``page`` assembles the document (``render_report``: header, key figures, cards, tables),
``charts`` draws the SVG charts and ``style`` holds the look: stage colours and labels, the
CSS and how values are written.
"""

from leadflow.projections.report.page import render_report

__all__ = ["render_report"]
