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


def test_the_dispatcher_sends_a_chord_following_no_result_and_naming_each_task(tmp_path, redis_server):
    """The dispatcher sends a block's chord without subscribing to the results of its 16
    header tasks (one Redis round trip each, a quarter of the send time) and without Celery
    repr-ing each task's arguments: the messages name the block and subband themselves.
    Outside ``results_not_followed`` Celery's own behaviour is untouched."""
    import json

    import redis

    from contimg.pipeline import _stop_result_listener, block_spec, build_chord
    from contimg.tasks.app import configure
    from contimg.tasks.backend import results_not_followed

    cfg = config.load(env={"CONTIMG_BROKER__URL": redis_server.url, "CONTIMG_PATHS__SCRATCH_ROOT": str(tmp_path)})
    app = configure(cfg)
    client = redis.Redis.from_url(redis_server.url)
    t = datetime(2025, 10, 5, 3, 0, 0, tzinfo=timezone.utc)
    files = {sb: SubbandFile(tmp_path / f"f{sb}", t, sb, 1) for sb in range(16)}
    spec = block_spec(Block("2025-10-05T03:00:00", files), tmp_path)
    consumer = app.backend.result_consumer
    try:
        client.delete("node1", "node2")
        with results_not_followed(app):
            build_chord(cfg, spec, "node1", token="t0k").apply_async()
        assert app.backend.follow_results
        assert not getattr(consumer, "subscribed_to", set()), "the dispatcher subscribed to header results"
        msgs = [json.loads(m) for q in ("node1", "node2") for m in client.lrange(q, 0, -1)]
        assert len(msgs) == 16
        assert {m["headers"]["argsrepr"] for m in msgs} == {f"('2025-10-05T03:00:00', {sb})" for sb in range(16)}
        assert all(m["headers"]["kwargsrepr"] == "{}" for m in msgs)
        build_chord(cfg, spec, "node1", token="t0k").apply_async()  # Celery's way: every header result followed
        assert len(consumer.subscribed_to) == 16
    finally:
        _stop_result_listener(app)
        client.delete("node1", "node2")
