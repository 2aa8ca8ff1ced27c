"""Mistakes a user can fix are one line and exit status 2, never an internal error:
each case names the file or the value that is wrong and what is allowed."""
from main_cli import main_error


def test_a_flagfile_that_is_not_utf8_is_one_line(tmp_path):
    flagfile = tmp_path / "latin1.flags"
    flagfile.write_bytes("--mode=summary\n--teacher=r\xe9snet8\n".encode("latin-1"))
    error, _ = main_error(f"--flagfile={flagfile}")
    assert error.endswith(f"--flagfile={flagfile} is not UTF-8 text: line 2 holds the byte 0xe9; "
                          "save the file as UTF-8")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"--flagfile={flagfile}\n")
    error, _ = main_error(f"--flagfile={outer}")
    assert f"--flagfile={flagfile} is not UTF-8 text" in error
