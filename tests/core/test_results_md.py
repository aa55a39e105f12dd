"""bench/RESULTS.md is shared by several writers: each replaces only its own section."""

from streamer.core.results_md import write_sections


def test_replace_one_section_keep_the_others(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## A\n\nold a\n\n### A detail\n\nold\n\n## B\n\nkeep b\n")
    write_sections(path, {"## A": "## A\n\nnew a\n\n### A detail\n\nnew"})
    assert path.read_text() == "# Benchmark results\n\n## A\n\nnew a\n\n### A detail\n\nnew\n\n## B\n\nkeep b\n"
    write_sections(path, {"## C": "## C\n\nc", "## B": "## B\n\nnew b"})
    text = path.read_text()
    assert text.endswith("## B\n\nnew b\n\n## C\n\nc\n") and "new a" in text and "keep b" not in text


def test_creates_the_file(tmp_path):
    path = tmp_path / "sub" / "RESULTS.md"
    write_sections(path, {"## X": "## X\n\nx"})
    assert path.read_text() == "# Benchmark results\n\n## X\n\nx\n"
