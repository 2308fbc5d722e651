"""Text cells that a spreadsheet would run as formulas, made inert (CSV injection).

A cell starting with = + - @ (or a tab or carriage return, which some spreadsheets skip before
looking) is read by Excel, LibreOffice and Google Sheets as a formula, which can run commands
(`=cmd|' /C calc'!A0`) or leak data. OWASP's advice: prefix such a cell with a single quote, which
spreadsheets show as text and hide. Numbers we write ourselves (scores) are not text cells.
"""

from __future__ import annotations

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """`value` unchanged, unless it is text a spreadsheet would take for a formula: then 'value."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value
