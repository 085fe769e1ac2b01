"""The engine's pure parts: the work queue, the child comparison, the cache store, the peering rule."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from modelops.engine.cache import Caches, Store, by_controller_uid
from modelops.engine.children import Children, OwnerGone, differences, quantity
from modelops.engine.pause import Pause
from modelops.engine.peering import pause_reason
from modelops.engine.queue import Backoff, RetryAfter, WorkQueue


def run_queue(process, *, workers: int = 2, pause: Pause | None = None) -> WorkQueue:  # type: ignore[no-untyped-def]
    queue = WorkQueue("test", process, workers=workers, pause=pause or Pause())
    queue.start()
    return queue


def wait_for(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- queue ---------------------------------------------------------------------------------------------


def test_a_burst_of_adds_coalesces_into_one_pass_per_key() -> None:
    started, release, passes = threading.Event(), threading.Event(), []

    def process(key):  # type: ignore[no-untyped-def]
        passes.append(key)
        started.set()
        release.wait(5)

    queue = run_queue(process, workers=1)
    queue.add("a")
    started.wait(5)
    for _ in range(50):  # while "a" runs: one more pass afterwards, not fifty
        queue.add("a")
        queue.add("b")
    release.set()
    wait_for(lambda: len(passes) >= 3)
    time.sleep(0.2)
    queue.stop()
    assert sorted(passes) == ["a", "a", "b"]


def test_one_key_never_runs_on_two_workers_at_once() -> None:
    running, overlaps, count = set(), [], [0]
    lock = threading.Lock()

    def process(key):  # type: ignore[no-untyped-def]
        with lock:
            if key in running:
                overlaps.append(key)
            running.add(key)
        time.sleep(0.01)
        with lock:
            running.discard(key)
            count[0] += 1

    queue = run_queue(process, workers=4)
    for _ in range(40):
        queue.add("same")
        time.sleep(0.002)
    wait_for(lambda: queue.delayed() == 0 and len(queue) == 0 and count[0] > 0)
    time.sleep(0.1)
    queue.stop()
    assert overlaps == []


def test_every_failure_is_retried_with_backoff_until_the_pass_succeeds() -> None:
    attempts: list[float] = []

    def process(key):  # type: ignore[no-untyped-def]
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise RuntimeError("transient")
        return None

    failures = []
    queue = WorkQueue("test", process, workers=1, pause=Pause(), backoff=Backoff(base=0.02, cap=1.0, jitter=0),
                      on_failure=failures.append)
    queue.start()
    queue.add("k")
    wait_for(lambda: len(attempts) == 4)
    queue.stop()
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert [f.failures for f in failures] == [1, 2, 3]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08  # doubling
    assert queue.backoff.failures("k") == 0  # success forgets the history


def test_retry_after_is_respected() -> None:
    attempts: list[float] = []

    def process(key):  # type: ignore[no-untyped-def]
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RetryAfter(0.3, RuntimeError("429 TooManyRequests"))

    queue = run_queue(process, workers=1)
    queue.add("k")
    wait_for(lambda: len(attempts) == 2)
    queue.stop()
    assert attempts[1] - attempts[0] >= 0.3


def test_the_pass_decides_its_next_run_and_replaces_an_older_schedule() -> None:
    runs: list[float] = []
    answers = iter([0.1, None])

    def process(key):  # type: ignore[no-untyped-def]
        runs.append(time.monotonic())
        return next(answers, None)

    queue = run_queue(process, workers=1)
    queue.add_after("k", 30)  # superseded by the pass's own answer
    queue.add("k")
    wait_for(lambda: len(runs) == 2)
    time.sleep(0.2)
    queue.stop()
    assert len(runs) == 2 and queue.delayed() == 0


def test_nothing_runs_while_paused_and_everything_when_the_pause_lifts() -> None:
    pause, runs = Pause(), []
    pause.close("peering", "another replica leads")
    queue = run_queue(runs.append, pause=pause)
    queue.add("a")
    queue.add_after("b", 0.05)
    time.sleep(0.3)
    assert runs == []
    pause.open("peering")
    wait_for(lambda: sorted(runs) == ["a", "b"])
    queue.stop()


def test_backoff_doubles_from_5ms_to_a_cap_with_bounded_jitter() -> None:
    backoff = Backoff(rng=lambda: 1.0)
    delays = [backoff.next_delay("k") for _ in range(25)]
    assert delays[0] == pytest.approx(0.0055) and delays[1] == pytest.approx(0.011)
    assert max(delays) == pytest.approx(1100.0)  # 1000 s + 10% jitter
    backoff.forget("k")
    assert backoff.next_delay("k") == pytest.approx(0.0055)


# ---- comparing children --------------------------------------------------------------------------------


def test_defaults_added_by_the_server_are_not_differences() -> None:
    desired = {"spec": {"ports": [{"name": "http", "port": 8000}], "selector": {"a": "b"}, "volumes": []}}
    observed = {"spec": {"ports": [{"name": "http", "port": 8000, "protocol": "TCP"}], "selector": {"a": "b"},
                         "sessionAffinity": "None"}, "status": {"loadBalancer": {}}}
    assert differences(desired, observed) is None


def test_a_changed_or_missing_field_is_a_difference_with_its_path() -> None:
    desired = {"spec": {"template": {"spec": {"containers": [{"name": "triton", "image": "triton:1"}]}}}}
    edited = {"spec": {"template": {"spec": {"containers": [{"name": "triton", "image": "evil:latest"}]}}}}
    assert differences(desired, edited) == ".spec.template.spec.containers[0].image"
    assert differences({"data": {"a": "1"}}, {"data": {}}) == ".data.a"
    assert differences({"spec": {"items": [1, 2]}}, {"spec": {"items": [1]}}) == ".spec.items"


@pytest.mark.parametrize("a, b", [("500m", "0.5"), ("1", "1000m"), ("1Gi", "1024Mi"), ("2e3", "2k"), (2, "2")])
def test_quantities_compare_by_value(a, b) -> None:  # type: ignore[no-untyped-def]
    assert quantity(a) == quantity(b)
    assert differences({"resources": {"limits": {"cpu": a}}}, {"resources": {"limits": {"cpu": b}}}) is None


def test_non_quantities_are_compared_as_they_are() -> None:
    assert quantity("triton:latest") is None
    assert differences({"image": "a"}, {"image": "b"}) == ".image"
    assert differences({"flag": True}, {"flag": False}) == ".flag"


# ---- the store -----------------------------------------------------------------------------------------


def pod(name: str, version: int, owner: str = "u1", ns: str = "ns") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(version),
                         "ownerReferences": [{"uid": owner, "controller": True}]}}


def test_relist_replaces_the_store_and_reports_deletions_missed_by_the_watch() -> None:
    store = Store({"owner": by_controller_uid})
    store.upsert(pod("a", 1))
    store.upsert(pod("b", 1))
    changes = store.replace([pod("a", 1), pod("c", 2)], None)
    assert sorted((kind, (new or old)["metadata"]["name"]) for kind, old, new in changes) == \
        [("ADDED", "c"), ("DELETED", "b")]
    assert [p["metadata"]["name"] for p in store.by_index("owner", "u1")] == ["a", "c"]


def test_an_older_copy_never_overwrites_a_newer_one() -> None:
    store = Store()
    store.upsert(pod("a", 7))
    _, stored = store.upsert(pod("a", 5))
    assert not stored and store.get("ns", "a")["metadata"]["resourceVersion"] == "7"


def test_relist_of_one_namespace_leaves_the_others_alone() -> None:
    store = Store()
    store.upsert(pod("a", 1, ns="one"))
    store.upsert(pod("b", 1, ns="two"))
    store.replace([], "one")
    assert store.get("two", "b") is not None and store.get("one", "a") is None


class ListWatch:
    """The two calls an informer makes, answered from lists: one list, then one watch's events."""

    def __init__(self, listed: list[dict], events: list[dict]) -> None:
        self.listed, self.events = listed, events

    def list_objects(self, api_version, kind, namespace, *, labels=None, fields=None, transform=None):  # type: ignore[no-untyped-def]
        return [transform(o) if transform else o for o in self.listed], "10"

    def watch_objects(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        yield from self.events


def test_a_cache_by_identity_keeps_ours_whatever_their_labels_and_drops_what_stops_being_ours() -> None:
    from modelops.engine.cache import Informer
    from modelops.resources.meta import ANNOTATION_OWNER, by_claim, is_ours

    relabelled = {"metadata": {"name": "w0", "namespace": "ns", "resourceVersion": "1", "labels": {"x": "y"},
                               "ownerReferences": [{"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob",
                                                    "uid": "u1", "controller": True}]}}
    orphan = {"metadata": {"name": "w1", "namespace": "ns", "resourceVersion": "2",
                           "annotations": {ANNOTATION_OWNER: "TrainingJob/job/u1"}}}
    foreign = {"metadata": {"name": "web", "namespace": "ns", "resourceVersion": "3",
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "uid": "rs",
                                                 "controller": True}]}}
    seen: list[tuple[str, str]] = []
    store = Store({"claims": by_claim})
    disowned = {"metadata": {**orphan["metadata"], "resourceVersion": "12", "annotations": {}}}
    informer = Informer(ListWatch([relabelled, orphan, foreign], [  # type: ignore[arg-type]
        {"type": "MODIFIED", "object": {**foreign, "metadata": {**foreign["metadata"], "resourceVersion": "11"}}},
        {"type": "MODIFIED", "object": disowned}]), "v1", "Pod", None, store,
        lambda change, old, new: seen.append((change, (new or old)["metadata"]["name"])), labels=None, keep=is_ours)
    informer._watch(informer._list())
    assert store.keys() == [("ns", "w0")]  # the foreign pod never stored, the one that stopped claiming us dropped
    assert seen == [("ADDED", "w0"), ("ADDED", "w1"), ("DELETED", "w1")]


# ---- peering -------------------------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def peer(priority: int, seen_ago: float = 1, lifetime: int = 60) -> dict:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat()}


def test_pause_while_a_live_peer_has_a_higher_or_the_same_priority() -> None:
    assert pause_reason({"me": peer(5), "other": peer(10)}, "me", 5, NOW)[0].startswith("paused in favour of other")
    assert pause_reason({"me": peer(5), "twin": peer(5)}, "me", 5, NOW)[0]
    assert pause_reason({"me": peer(5), "low": peer(1)}, "me", 5, NOW) == ("", float("inf"))


def test_an_expired_peer_does_not_pause_and_the_wait_ends_when_the_blocker_expires() -> None:
    assert pause_reason({"other": peer(10, seen_ago=61)}, "me", 5, NOW)[0] == ""
    reason, wait = pause_reason({"other": peer(10, seen_ago=50)}, "me", 5, NOW)
    assert reason and wait == pytest.approx(10)


def test_garbage_in_the_peering_object_is_ignored() -> None:
    status = {"x": "not a peer", "y": {"priority": "high", "lastseen": "yesterday"}, "z": peer(1)}
    assert pause_reason(status, "me", 5, NOW)[0] == ""


def test_prune_drops_what_a_list_no_longer_has_but_keeps_newer_arrivals() -> None:
    store = Store()
    store.upsert(pod("deleted-meanwhile", 5))
    store.upsert(pod("still-there", 6))
    store.upsert(pod("created-after-the-list", 12))
    removed = store.prune({("ns", "still-there")}, None, "10")
    assert [o["metadata"]["name"] for o in removed] == ["deleted-meanwhile"]
    assert store.get("ns", "created-after-the-list") is not None and store.get("ns", "still-there") is not None


# ---- children --------------------------------------------------------------------------------------------


class OwnerOnlyKube:
    """Answers GETs of one owner (or 404 once it is deleted) and records the children created: the
    garbage collector racing the owner's DELETED event cannot be produced on demand by a real cluster."""

    def __init__(self) -> None:
        self.owner: dict | None = {"metadata": {"name": "digits", "uid": "u1"}}
        self.gets = 0
        self.created: list[str] = []

    def get(self, api_version, kind, namespace, name):  # type: ignore[no-untyped-def]
        self.gets += 1
        return self.owner

    def create(self, obj):  # type: ignore[no-untyped-def]
        self.created.append(obj["metadata"]["name"])
        return obj


def worker_pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns", "ownerReferences": [
        {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "name": "digits", "uid": "u1",
         "controller": True}]}}


def test_children_of_a_deleted_owner_are_not_created_again_and_a_live_owner_is_checked_once_per_pass() -> None:
    kube, caches = OwnerOnlyKube(), Caches()
    caches.stores["Pod"] = Store()
    children = Children(kube, caches)  # type: ignore[arg-type]
    children.begin_pass()
    assert children.ensure("u1", worker_pod("digits-a0-w0")) == "created"
    assert children.ensure("u1", worker_pod("digits-a0-w1")) == "created"
    assert kube.gets == 1  # one GET of the owner for the creations of one pass
    kube.owner = None  # deleted right after that pass: the next pass, however soon, asks again
    children.begin_pass()
    with pytest.raises(OwnerGone):
        children.ensure("u1", worker_pod("digits-a1-w0"))
    kube.owner = {"metadata": {"name": "digits", "uid": "u2"}}  # re-created under the same name
    with pytest.raises(OwnerGone):
        children.ensure("u1", worker_pod("digits-a1-w0"))
    assert kube.created == ["digits-a0-w0", "digits-a0-w1"]
