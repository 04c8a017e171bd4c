"""The command line: instant help, clean errors for bad input (exit 2, no traceback)."""

import subprocess
import sys

from llmser.cli import COMMANDS, build_parser, main


def test_help_lists_every_command(capsys):
    parser = build_parser()
    text = parser.format_help()
    for name in COMMANDS:
        assert name in text


def test_python_dash_m_help_does_not_import_torch():
    code = "import sys, llmser.cli; llmser.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_corpus_is_a_clean_error(tmp_path, capsys):
    status = main(["predict-prior", "--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.csv")])
    assert status == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nowhere" in err
    assert not (tmp_path / "p.csv").exists()
