"""Reprocessing on dask.distributed equals the live pipeline row for row, and survives a killed Dask worker."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

pytest.importorskip("distributed")

from streamer.modalities.minflux.simulate import simulate  # noqa: E402
from streamer.pipeline.launcher import run_local_pipeline  # noqa: E402
from streamer.pipeline.reprocess import reprocess  # noqa: E402
from streamer.pipeline.results import load_results  # noqa: E402

SIZE = 500


def _assert_equal_results(a: dict, b: dict) -> None:
    keys = {k for k in a if not k.startswith(("packet_t_",))}
    assert keys == {k for k in b if not k.startswith("packet_t_")}
    for k in sorted(keys):
        x, y = a[k], b[k]
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}"), err_msg=k)  # bit-equal
        else:
            np.testing.assert_array_equal(x, y, err_msg=k)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A live run with the raw archive on: its results are the reference."""
    tmp = tmp_path_factory.mktemp("live")
    rec = simulate("dynamic", 4, 5000, seed=9)
    path = rec.save(tmp / "rec.npz")
    run_local_pipeline(rec, workers=2, predictor="minflux:dynamic", packet_size=SIZE, out_dir=str(tmp / "out"),
                       sink_args=["--archive", str(tmp / "archive")])
    return tmp, path, load_results(tmp / "out", "minflux")


def test_reprocessing_the_archive_equals_the_live_pipeline(live, tmp_path):
    tmp, _, ref = live
    s = reprocess(tmp / "archive", tmp_path / "re", ["minflux:dynamic"], workers=2, packets_per_task=7)
    assert s["items"] == 20_000 and s["tasks"] == 6
    _assert_equal_results(load_results(tmp_path / "re", "minflux"), ref)


def test_reprocessing_the_replay_file_equals_the_live_pipeline(live, tmp_path):
    tmp, path, ref = live
    reprocess(path, tmp_path / "re", ["minflux:dynamic"], workers=2, packets_per_task=10, packet_size=SIZE)
    got = load_results(tmp_path / "re", "minflux")
    ref = {k: v for k, v in ref.items() if k != "packet_digest"}  # t_acq differs: a new encoding of the file
    _assert_equal_results({k: v for k, v in got.items() if k != "packet_digest"}, ref)


def test_a_killed_dask_worker_leaves_complete_duplicate_free_output(live, tmp_path):
    tmp, _, ref = live

    def kill_one(client):
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)

    s = reprocess(tmp / "archive", tmp_path / "re", ["minflux:dynamic"], workers=2, packets_per_task=2,
                  on_first_result=kill_one)
    assert s["items"] == 20_000
    _assert_equal_results(load_results(tmp_path / "re", "minflux"), ref)


#: small recordings of the other modalities: (simulator options, packet size)
OTHERS = {"electron": (["--frames", "300", "--size", "100"], 50),
          "smlm3d": (["--frames", "300"], 50),
          "diffusion": (["--stacks", "240"], 40)}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_every_modality_reprocesses_equal_to_live(name, tmp_path):
    from streamer.commands import simulation
    from streamer.core import registry

    if not registry.known(name):
        pytest.skip(f"{name} not installed")
    mod = registry.get(name)
    options, size = OTHERS[name]
    rec = simulation.recording(mod, options)
    run_local_pipeline(rec, workers=2, predictor=f"{name}:", packet_size=size, out_dir=str(tmp_path / "live"),
                       sink_args=["--archive", str(tmp_path / "archive")])
    s = reprocess(tmp_path / "archive", tmp_path / "re", [f"{name}:"], workers=2, packets_per_task=2)
    assert s["items"] == len(rec)
    _assert_equal_results(load_results(tmp_path / "re", name), load_results(tmp_path / "live", name))
