"""The Celery settings FIELD-NOTES §4 asks for, and routing of a block's chord."""

from datetime import datetime, timezone

from contimg import config
from contimg.blocks import Block, SubbandFile
from contimg.tasks.app import celery_settings


def test_settings_json_only_and_late_acks():
    cfg = config.load(env={"CONTIMG_BROKER__URL": "redis://127.0.0.1:1/0"})
    s = celery_settings(cfg)
    assert s["task_serializer"] == s["result_serializer"] == "json"
    assert s["accept_content"] == ["json"] and s["result_accept_content"] == ["json"]
    assert s["task_acks_late"] and s["task_reject_on_worker_lost"]
    assert s["worker_prefetch_multiplier"] == 1
    vt = s["broker_transport_options"]["visibility_timeout"]
    assert vt > s["task_time_limit"] > s["task_soft_time_limit"]
    assert s["result_expires"] >= vt


def test_chord_routes_each_subband_to_its_node(tmp_path):
    from contimg.pipeline import block_spec, build_chord

    cfg = config.load(env={"CONTIMG_BROKER__URL": "redis://127.0.0.1:1/0",
                           "CONTIMG_PATHS__SCRATCH_ROOT": str(tmp_path)})
    t = datetime(2025, 10, 5, 3, 0, 0, tzinfo=timezone.utc)
    files = {sb: SubbandFile(tmp_path / f"f{sb}", t, sb, 1) for sb in range(16) if sb != 4}
    spec = block_spec(Block("2025-10-05T03:00:00", files), tmp_path)
    ch = build_chord(cfg, spec, "node1", token="t0k")
    queues = {s.args[1]: s.options["queue"] for s in ch.tasks}
    assert queues == {sb: ("node1" if sb < 8 else "node2") for sb in range(16) if sb != 4}
    for s in ch.tasks:
        assert s.args[3].startswith(str(tmp_path / s.options["queue"]))
    assert ch.body.options["queue"] == "node1"
    assert ch.body.kwargs["missing"] == [4] and ch.body.kwargs["nodes_used"] == ["node1", "node2"]
    assert ch.body.kwargs["token"] == "t0k" and all(s.kwargs["token"] == "t0k" for s in ch.tasks)
