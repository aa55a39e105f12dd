"""The command line: every sub-command imports, and ``--help`` works for all of them."""

import pytest

from streamer.cli import COMMANDS, main


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in COMMANDS])
def test_help_works(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: streamer" in capsys.readouterr().out


def test_unknown_predictor_is_a_clear_error(capsys):
    assert main(["run", "--simulate", "static", "--traces", "1", "--tuples-per-trace", "10",
                 "--predictor", "no-such-model"]) == 2
    assert "has no predictor 'no-such-model'" in capsys.readouterr().err
