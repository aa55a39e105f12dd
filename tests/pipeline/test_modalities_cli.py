"""`streamer modalities` and the README's wire tables: one source of truth (the declarations)."""

from pathlib import Path

from streamer.cli import main
from streamer.commands.modalities import BEGIN, END, readme_block

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_wire_tables_are_generated_from_the_declarations():
    text = README.read_text()
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == readme_block(), "run `streamer modalities --readme README.md` after changing a declaration"


def test_modalities_lists_schema_and_predictors(capsys):
    assert main(["modalities"]) == 0
    out = capsys.readouterr().out
    assert "minflux: MINFLUX two-emitter distance" in out and "counts       <u2" in out and "static*" in out


def test_unknown_modality_is_a_clear_error(capsys):
    assert main(["demo", "--modality", "no-such"]) == 2
    assert "unknown modality 'no-such'" in capsys.readouterr().err


def test_verb_a_modality_lacks_says_so(capsys, monkeypatch):
    from streamer.core import registry
    from streamer.core.modality import Modality, ResultSpec

    registry.register(Modality("bare", "bare", packets=(), results=ResultSpec(), predictors=(), default_predictor=""))
    try:
        assert main(["train", "--modality", "bare"]) == 2
        assert "modality 'bare' has no 'train'" in capsys.readouterr().err
    finally:
        registry.reset()
