"""Multi-process sampling bookkeeping (videomv_jax.sampling_batch): disjoint shares that keep
global numbers, the process identity from a launcher's environment, one merged index."""

from __future__ import annotations

import json
import threading

import pytest

from videomv_jax import sampling_batch as sb


@pytest.mark.parametrize("n", [0, 1, 5, 7, 8, 23])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shares_are_disjoint_contiguous_and_cover_everything(n, count):
    shares = [sb.process_share(n, i, count) for i in range(count)]
    flat = [k for s in shares for k in s]
    assert flat == list(range(n))  # each item once, in order: process i's block precedes i+1's
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_share_examples_and_errors():
    assert list(sb.process_share(5, 0, 2)) == [0, 1, 2]
    assert list(sb.process_share(5, 1, 2)) == [3, 4]
    assert list(sb.process_share(1, 1, 2)) == []
    with pytest.raises(ValueError, match="index < count"):
        sb.process_share(4, 2, 2)


def test_process_identity_from_launcher_environments():
    assert sb.process_identity({}) == (0, 1)
    assert sb.process_identity({"JAX_PROCESS_ID": "1", "JAX_NUM_PROCESSES": "2"}) == (1, 2)
    assert sb.process_identity({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}) == (3, 4)
    assert sb.process_identity({"OMPI_COMM_WORLD_RANK": "0",
                                "OMPI_COMM_WORLD_SIZE": "2"}) == (0, 2)
    assert sb.process_identity({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (0, 1)
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=2 must lie in \[0"):
        sb.process_identity({"JAX_PROCESS_ID": "2", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="not integers"):
        sb.process_identity({"JAX_PROCESS_ID": "x", "JAX_NUM_PROCESSES": "2"})


def test_merged_index_waits_for_every_process_and_keeps_global_order(tmp_path):
    prompts = [f"prompt {k}" for k in range(7)]
    count = 3

    def run(pid):
        share = sb.process_share(len(prompts), pid, count)
        entries = [{"index": k, "prompt": prompts[k], "seed": 11 + k} for k in share]
        sb.write_index_part(str(tmp_path), entries, pid, count)

    # processes 1 and 2 finish after process 0 started merging
    late = [threading.Timer(0.3, run, args=(pid,)) for pid in (2, 1)]
    for t in late:
        t.start()
    run(0)
    path = sb.merge_index(str(tmp_path), count, timeout_s=30, poll_s=0.05)
    for t in late:
        t.join()
    index = json.loads(open(path).read())
    assert [e["index"] for e in index["samples"]] == list(range(7))
    assert [e["prompt"] for e in index["samples"]] == prompts
    assert [e["seed"] for e in index["samples"]] == [11 + k for k in range(7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]  # parts removed


def test_merge_index_errors(tmp_path):
    sb.write_index_part(str(tmp_path), [{"index": 0}], 0, 2)
    with pytest.raises(TimeoutError, match="part00001-of-00002"):
        sb.merge_index(str(tmp_path), 2, timeout_s=0.2, poll_s=0.05)
    sb.write_index_part(str(tmp_path), [{"index": 0}], 1, 2)  # the same sample twice
    with pytest.raises(ValueError, match="written twice"):
        sb.merge_index(str(tmp_path), 2, timeout_s=1)
