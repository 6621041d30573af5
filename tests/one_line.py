"""What every refused command line must look like: exit status 2 and exactly one line on stderr, no traceback."""
from __future__ import annotations

from flows.cli import main


def refused(argv: list[str], capsys, *says: str) -> str:
    """main(argv) exits 2 (argparse's SystemExit or the returned code) with exactly one stderr line holding `says`."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in says:
        assert text in lines[0], (text, lines[0])
    return lines[0]
