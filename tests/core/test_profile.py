"""Instrument profiles: parsing errors are clear, round trips are exact, coverage says what is outside."""

import pytest

from streamer.core import profile as prof
from streamer.core import registry
from streamer.core.modality import ArraySpec, ResultSpec

DIFF = registry.get("diffusion")


def _parse(text):
    return prof.parse(text, registry.get, "scope.toml")


def test_nominal_round_trip_and_hash():
    p = prof.nominal(DIFF)
    q = _parse(p.to_toml())
    assert dict(q.values) == dict(p.values) and q.hash == p.hash and q.name == "nominal"
    r = p.with_values({"fwhm_nm": 300.0}, "beads", "b")
    assert r.hash != p.hash and r.provenance["fwhm_nm"] == "beads" and r.provenance["pixel_nm"] == "nominal"


def test_missing_values_take_the_nominal_ones():
    p = _parse('modality = "diffusion"\nname = "b"\n[values]\npixel_nm = 108\n')
    assert p["pixel_nm"] == 108.0 and p["fwhm_nm"] == 250.0
    assert p.provenance["pixel_nm"] == "file" and p.provenance["fwhm_nm"] == "nominal"


@pytest.mark.parametrize("text,words", [
    ('modality = "diffusion"\n[values\npixel_nm = 1', "not valid TOML"),
    ('name = "x"\n', "'modality' must name"),
    ('modality = "nope"\n', "nope"),
    ('modality = "diffusion"\n[values]\npixel_mm = 100\n', "unknown diffusion parameters ['pixel_mm']"),
    ('modality = "diffusion"\n[values]\npixel_nm = "big"\n', "values.pixel_nm must be a number (nm)"),
    ('modality = "diffusion"\n[values]\npixel_nm = true\n', "values.pixel_nm must be a number"),
    ('modality = "diffusion"\n[values]\npixel_nm = -5\n', "outside the possible range [1, 10000] nm"),
    ('modality = "diffusion"\n[values]\nframe_s = nan\n', "values.frame_s = nan"),
    ('modality = "diffusion"\nname = "a b/c"\n', "'name' must be"),
    ('modality = "diffusion"\ncolour = "red"\n', "unknown keys ['colour']"),
    ('modality = "diffusion"\nvalues = 3\n', "must be tables"),
])
def test_parse_errors_name_the_file_and_the_key(text, words):
    with pytest.raises(prof.ProfileError) as e:
        _parse(text)
    assert str(e.value).startswith("scope.toml: ") and words in str(e.value)


def test_load_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(prof.ProfileError, match="cannot read profile"):
        prof.load(tmp_path / "none.toml", registry.get)


def test_coverage_outside():
    p = prof.nominal(DIFF)
    cov = prof.Coverage.around(p, DIFF.profile, {"fwhm_nm": (200.0, 300.0)})
    assert cov.outside(p.values) == []
    assert cov.outside({"fwhm_nm": 350.0}) == ["fwhm_nm=350 not in [200, 300]"]
    assert cov.outside({"pixel_nm": 200 * 1.06}) and not cov.outside({"pixel_nm": 200 * 1.04})
    back = prof.Coverage.from_manifest("diffusion", cov.to_manifest())
    assert back.ranges == cov.ranges and back.profile_hash == p.hash


def test_result_spec_rejects_bit_indices_and_unknown_intervals():
    flags = ArraySpec("flags", ("u1",), ("n",))
    with pytest.raises(ValueError, match="single-bit"):
        ResultSpec(items=(flags,), flags={0: "edge"})
    with pytest.raises(ValueError, match="mismatch_flag"):
        ResultSpec(items=(flags,), flags={1: "edge"}, mismatch_flag=2)
    with pytest.raises(ValueError, match="intervals"):
        ResultSpec(items=(flags,), flags={1: "edge"}, intervals=("lo",))


def test_cli_new_show_validate(tmp_path, capsys):
    from streamer.cli import main

    out = tmp_path / "b.toml"
    assert main(["profile", "new", "--modality", "diffusion", str(out), "--set", "fwhm_nm=320"]) == 0
    assert prof.load(out, registry.get)["fwhm_nm"] == 320.0
    assert main(["profile", "new", "--modality", "diffusion", str(out)]) == 2  # exists
    assert main(["profile", "new", "--modality", "diffusion", str(tmp_path / "c.toml"), "--set", "fwhm_nm=1e9"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('modality = "diffusion"\n[values]\nframe_s = 0\n')
    capsys.readouterr()
    assert main(["profile", "validate", str(out), str(bad)]) == 1
    text = capsys.readouterr().out
    assert f"{out}: ok" in text and "values.frame_s = 0 s is outside" in text
    assert main(["profile", "show", str(out)]) == 0 and "fwhm_nm" in capsys.readouterr().out
