"""The trainer's local-rank launcher and the distributed env it hands each rank (no torch, no processes)."""

from __future__ import annotations

import pytest

from modelops.trainer import TrainerError, launch
from modelops.trainer.distributed import DistEnv

POD1 = {"WORLD_SIZE": "8", "RANK": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
        "MASTER_ADDR": "job-w0.job-workers", "MASTER_PORT": "29500", "OMP_NUM_THREADS": "2"}


def test_each_local_rank_gets_its_own_rank_and_the_pods_group() -> None:
    envs = launch.rank_envs(POD1)
    assert [(e["RANK"], e["LOCAL_RANK"], e["GROUP_RANK"], e["LOCAL_WORLD_SIZE"], e["WORLD_SIZE"]) for e in envs] == \
        [(str(4 + i), str(i), "1", "4", "8") for i in range(4)]
    assert all(e["MASTER_ADDR"] == "job-w0.job-workers" and e[launch.SPAWNED] == "1" for e in envs)
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"2"}  # the user's setting wins
    dists = [DistEnv.from_env(e) for e in envs]
    assert [d.rank for d in dists] == [4, 5, 6, 7] and {d.is_main for d in dists} == {False}
    assert {(d.local_world_size, d.group_rank, d.world_size) for d in dists} == {(4, 1, 8)}


def test_one_pod_group_meets_on_loopback() -> None:
    envs = launch.rank_envs({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {("127.0.0.1", "29500")}
    assert DistEnv.from_env(envs[0]).is_main and not DistEnv.from_env(envs[1]).is_main


def test_who_launches() -> None:
    assert launch.should_launch(POD1)
    assert not launch.should_launch({**POD1, "LOCAL_WORLD_SIZE": "1"})
    assert not launch.should_launch({**POD1, launch.SPAWNED: "1"})  # a rank never launches again
    assert not launch.should_launch({**POD1, launch.TORCHRUN_MARK: "x"})  # nor a rank torchrun started
    assert not launch.should_launch({})


@pytest.mark.parametrize("env", [
    {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"},  # pod 1 of a world too small
    {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "two"},
])
def test_impossible_local_ranks_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(TrainerError):
        launch.rank_envs(env)


@pytest.mark.parametrize("env", [
    {"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
    {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
])
def test_dist_env_refuses_a_local_rank_outside_its_pod(env: dict[str, str]) -> None:
    with pytest.raises(TrainerError):
        DistEnv.from_env(env)
