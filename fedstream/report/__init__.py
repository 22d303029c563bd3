"""``fedstream report``: one self-contained HTML page of a model's training, for operators and auditors.

Three parts: :mod:`~fedstream.report.data` summarises plain rows into a :class:`ReportData` (pure),
:mod:`~fedstream.report.render` draws it as HTML with inline SVG charts (pure), and
:mod:`~fedstream.report.read` collects the rows from the Delta tables with Spark (imported on use).
"""

from fedstream.report.data import ReportData, pseudonym, summarize
from fedstream.report.render import render_html

__all__ = ["ReportData", "pseudonym", "render_html", "summarize"]
