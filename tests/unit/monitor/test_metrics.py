"""Metrics in one process (as before), the multiprocess directory, and the mode checks."""

import os
import stat

import pytest
from prometheus_client import generate_latest

from modelhost.errors import ConfigError
from modelhost.monitor.metrics import (
    MULTIPROC_ENV,
    Metrics,
    multiprocess_dir,
    prepare_multiprocess_dir,
)


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def test_one_process_exposes_its_own_families():
    metrics = Metrics("9.9")
    model = metrics.for_model("m", "1")
    metrics.observe_request("m", "1", "native", 200, 0.02)
    model.inference_count.inc(3)
    model.pending.set(2)
    model.in_flight.inc()
    model.ready.set(1)
    r = metrics.registry
    labels = {"model": "m", "version": "1"}
    ok = {**labels, "protocol": "native", "code": "200"}
    assert r.get_sample_value("modelhost_inference_requests_total", ok) == 1
    durations = {**labels, "protocol": "native"}
    assert r.get_sample_value("modelhost_request_duration_seconds_count", durations) == 1
    assert r.get_sample_value("modelhost_inference_count_total", labels) == 3
    assert r.get_sample_value("modelhost_pending_requests", labels) == 2
    assert r.get_sample_value("modelhost_in_flight_requests", labels) == 1
    assert r.get_sample_value("modelhost_model_ready", labels) == 1
    assert r.get_sample_value("modelhost_build_info", {"version": "9.9"}) == 1
    # In memory, as before: counters still carry their _created sample, gauges no pid.
    text = generate_latest(r).decode()
    assert "modelhost_inference_count_created" in text
    assert "pid=" not in text


def test_two_servers_in_one_process_count_apart():
    first, second = Metrics("1"), Metrics("1")
    first.for_model("m", "1").inference_count.inc(5)
    second.for_model("m", "1").inference_count.inc(1)
    labels = {"model": "m", "version": "1"}
    assert first.registry.get_sample_value("modelhost_inference_count_total", labels) == 5
    assert second.registry.get_sample_value("modelhost_inference_count_total", labels) == 1


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("/d", "/d")])
def test_multiprocess_dir_reads_the_variable_prometheus_client_reads(monkeypatch, value, expected):
    if value is not None:
        monkeypatch.setenv(MULTIPROC_ENV, value)
    got = multiprocess_dir()
    assert (None if got is None else str(got)) == expected


def test_a_directory_named_after_prometheus_client_was_imported_is_refused(monkeypatch, tmp_path):
    # This test process imported prometheus_client without the variable: its values are
    # in memory, so other workers could never see them.
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=f"{MULTIPROC_ENV}=.*set after prometheus_client"):
        Metrics("1")


def test_prepare_creates_a_private_directory(tmp_path):
    d = tmp_path / "run" / "metrics"
    prepare_multiprocess_dir(d)
    assert d.is_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_prepare_clears_an_earlier_runs_metric_files_and_nothing_else(tmp_path):
    stale = ["counter_12.db", "histogram_12.db", "gauge_livesum_12.db", "gauge_max_7.db"]
    kept = ["registry.db", "counter_notes.db", "notes.txt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    tmp_path.chmod(0o755)
    prepare_multiprocess_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_prepare_refuses_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "counter_1.db").write_bytes(b"x")
    link = tmp_path / "metrics"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symlink"):
        prepare_multiprocess_dir(link)
    assert (target / "counter_1.db").exists()


def test_prepare_refuses_a_file(tmp_path):
    f = tmp_path / "metrics"
    f.write_text("")
    with pytest.raises(ConfigError, match=MULTIPROC_ENV):
        prepare_multiprocess_dir(f)


def test_prepare_refuses_a_directory_of_another_user(monkeypatch, tmp_path):
    (tmp_path / "counter_1.db").write_bytes(b"x")
    someone_else = os.geteuid() + 1
    monkeypatch.setattr(os, "geteuid", lambda: someone_else)
    with pytest.raises(ConfigError, match="not to you"):
        prepare_multiprocess_dir(tmp_path)
    assert (tmp_path / "counter_1.db").exists()
