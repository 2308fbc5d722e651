"""Reading dataset text files the way users actually save them.

Files come from Excel, Windows editors and scripts: UTF-8 with or without a BOM, UTF-16 from
PowerShell redirection, Windows-1252 from spreadsheets, CRLF line ends. We read all of them and
say (as a warning) when the encoding was not UTF-8, instead of failing on the first accent.
"""

from __future__ import annotations

import codecs

from finetune_app.core.errors import Problem

UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def normalise_bytes(data: bytes, file: str) -> tuple[bytes, list[Problem]]:
    """Return UTF-8 bytes without a BOM (re-encoding UTF-16 files), plus warnings.

    Invalid UTF-8 inside an otherwise UTF-8 file is left alone here: line-based readers decide
    per line (see `decode_line`), so one bad line does not change how the others are read."""
    problems: list[Problem] = []
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    elif data.startswith(UTF16_BOMS):
        try:
            data = data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(file, None, None, "file starts like UTF-16 but cannot be "
                                    f"decoded ({exc.reason}). Save it as UTF-8.", "error"))
            return b"", problems
        problems.append(Problem(file, None, None, "file is UTF-16; it was read, but save it as "
                                "UTF-8 for other tools (PowerShell '>' writes UTF-16).", "warning"))
    return data, problems


def decode_line(raw: bytes) -> tuple[str, str | None]:
    """Decode one line as UTF-8, else as Windows-1252; the second item is a warning or None."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.start + 1]
        text = raw.decode("cp1252", errors="replace")
        return text, (f"not valid UTF-8 (byte 0x{bad.hex()} at column {exc.start + 1}); read it "
                      "as Windows-1252. Save the file as UTF-8 so accents come out right.")


def decode_text(data: bytes, file: str) -> tuple[str, list[Problem]]:
    """Decode a whole file (CSV, JSON array): UTF-8, UTF-16 with BOM, or Windows-1252 fallback."""
    data, problems = normalise_bytes(data, file)
    try:
        return data.decode("utf-8"), problems
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problems.append(Problem(file, line, None,
                                "file is not valid UTF-8 (first bad byte "
                                f"0x{data[exc.start:exc.start + 1].hex()} "
                                "here); read it as Windows-1252. Save the file as UTF-8 so accents "
                                "come out right.", "warning"))
        return data.decode("cp1252", errors="replace"), problems
