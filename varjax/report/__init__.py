"""The report of a finished run: tables (``tables``), plots (``plots``), the lens section (``lenses``).

Reads only what run/summary.py writes (summary.json, per_example.npz).
"""

from varjax.report.tables import write_report

__all__ = ['write_report']
