"""The Redis work queue of blocks: K per node, atomic claims, leases and the reaper (real redis-server)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from contimg.dispatch import KEYS, WorkQueue


@pytest.fixture
def queue(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.delete(*KEYS)
    yield WorkQueue(client)
    client.delete(*KEYS)


def spec(i):
    return {"block_id": f"b{i:03d}", "files": {"0": f"/d/{i}_sb00.hdf5"}, "mid_jd": 2460000.5 + i, "missing": []}


def test_fifo_and_at_most_k_per_node(queue):
    for i in range(5):
        assert queue.enqueue(f"b{i:03d}", spec(i)) == "queued"
    a = [queue.claim("node1", 2, 60) for _ in range(3)]
    assert [c.block_id for c in a[:2]] == ["b000", "b001"] and a[2] is None  # K=2 reached
    b = queue.claim("node3", 2, 60)
    assert b.block_id == "b002" and b.spec == spec(2) and b.attempt == 1  # any free node takes what is left
    assert queue.release(a[0].block_id, a[0].token)
    assert queue.claim("node1", 2, 60).block_id == "b003"  # a slot freed: the next block is taken
    assert queue.counts()["pending"] == 1


def test_enqueue_twice_and_while_in_flight(queue):
    assert queue.enqueue("b000", spec(0)) == "queued"
    assert queue.enqueue("b000", spec(0)) == "pending"
    c = queue.claim("node1", 1, 60)
    assert queue.enqueue("b000", spec(0), force=True) == "inflight"  # never handed out twice at once
    assert queue.pending() == []
    assert queue.release("b000", c.token)
    assert queue.enqueue("b000", spec(0)) == "queued"


def test_racing_claims_never_exceed_k_nor_double_claim(queue):
    n = 40
    for i in range(n):
        queue.enqueue(f"b{i:03d}", spec(i))
    claims, lock = [], threading.Lock()

    def worker(node):
        q = WorkQueue(redis.Redis(connection_pool=queue.r.connection_pool))
        for _ in range(30):
            c = q.claim(node, 3, 60)
            if c:
                with lock:
                    claims.append(c)

    threads = [threading.Thread(target=worker, args=(f"node{i % 2}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_node = {}
    for c in claims:
        per_node[c.node] = per_node.get(c.node, 0) + 1
    assert per_node == {"node0": 3, "node1": 3}
    assert len({c.block_id for c in claims}) == len(claims) == 6


def test_stale_token_cannot_renew_or_release(queue):
    queue.enqueue("b000", spec(0))
    c = queue.claim("node1", 1, 60)
    assert queue.renew("b000", c.token, 60) and queue.holds("b000", c.token)
    assert not queue.renew("b000", "forged", 60)
    assert not queue.release("b000", "forged")
    assert queue.inflight() == {"b000": "node1"}


def test_reaper_requeues_then_gives_up(queue):
    queue.enqueue("b000", spec(0))
    c1 = queue.claim("node1", 1, lease_s=0.05)
    time.sleep(0.1)
    (r,) = queue.reap(max_attempts=2)
    assert (r.block_id, r.outcome, r.attempts) == ("b000", "requeued", 1)
    assert not queue.renew("b000", c1.token, 60)  # the old chord's tasks now see a stale lease
    c2 = queue.claim("node2", 1, lease_s=0.05)
    assert c2.block_id == "b000" and c2.attempt == 2 and c2.token != c1.token
    time.sleep(0.1)
    (r,) = queue.reap(max_attempts=2)
    assert r.outcome == "failed" and r.attempts == 2
    assert queue.pending() == [] and queue.inflight() == {}


def test_renewed_lease_is_not_reaped(queue):
    queue.enqueue("b000", spec(0))
    c = queue.claim("node1", 1, lease_s=0.2)
    for _ in range(3):
        time.sleep(0.1)
        assert queue.renew("b000", c.token, 0.2)
        assert queue.reap(max_attempts=3) == []
