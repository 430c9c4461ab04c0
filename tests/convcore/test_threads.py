"""convcore's thread count follows the CPUs this process may use: affinity, cgroup quota, CONVCORE_NUM_THREADS.

The cgroup files are written into a temporary folder laid out as /sys/fs/cgroup is,
with a /proc/self/cgroup naming the process's group.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from convcore import backend, resources

MANY = range(64)   # an affinity mask of 64 CPUs: the host a container runs on


def cgroup_v2(tmp_path, cpu_max: str | None, nested: str | None = None):
    """A v2 hierarchy: cpu.max at the namespace root, and optionally in the process's own nested group."""
    root = tmp_path / "cgroup"
    root.mkdir()
    if cpu_max is not None:
        (root / "cpu.max").write_text(cpu_max + "\n")
    own = "/"
    if nested is not None:
        own = "/worker.slice/job"
        (root / "worker.slice" / "job").mkdir(parents=True)
        (root / "worker.slice" / "job" / "cpu.max").write_text(nested + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def test_a_container_limited_to_two_cpus_gets_two_threads(tmp_path):
    root, proc = cgroup_v2(tmp_path, "200000 100000")
    assert resources.cpu_count(root, proc, affinity=MANY) == 2


def test_fractional_quota_rounds_up_and_never_reaches_zero(tmp_path):
    root, proc = cgroup_v2(tmp_path, "150000 100000")
    assert resources.cpu_count(root, proc, affinity=MANY) == 2
    (tmp_path / "b").mkdir()
    root2, proc2 = cgroup_v2(tmp_path / "b", "10000 100000")
    assert resources.cpu_count(root2, proc2, affinity=MANY) == 1


def test_whole_counts_only_the_whole_cpus_of_a_quota(tmp_path):
    """Room for busy processes (the API's default count): 1.5 CPUs' worth of time is one, never zero."""
    root, proc = cgroup_v2(tmp_path, "150000 100000")
    assert resources.cpu_count(root, proc, affinity=MANY, whole=True) == 1
    (tmp_path / "b").mkdir()
    root2, proc2 = cgroup_v2(tmp_path / "b", "250000 100000")
    assert resources.cpu_count(root2, proc2, affinity=MANY, whole=True) == 2
    (tmp_path / "c").mkdir()
    root3, proc3 = cgroup_v2(tmp_path / "c", "10000 100000")
    assert resources.cpu_count(root3, proc3, affinity=MANY, whole=True) == 1


def test_no_quota_means_the_affinity_mask(tmp_path):
    root, proc = cgroup_v2(tmp_path, "max 100000")
    assert resources.cpu_count(root, proc, affinity=range(5)) == 5
    assert resources.cpu_count(tmp_path / "absent", tmp_path / "absent_proc", affinity=range(3)) == 3


def test_the_tightest_quota_along_the_path_wins(tmp_path):
    root, proc = cgroup_v2(tmp_path, "800000 100000", nested="300000 100000")
    assert resources.cpu_count(root, proc, affinity=MANY) == 3


def test_the_affinity_mask_caps_a_larger_quota(tmp_path):
    root, proc = cgroup_v2(tmp_path, "1600000 100000")
    assert resources.cpu_count(root, proc, affinity={0, 1, 2, 3}) == 4


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("400000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert resources.cpu_count(root, proc, affinity=MANY) == 4
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")   # unlimited
    assert resources.cpu_count(root, proc, affinity=MANY) == 64


def test_this_process_uses_its_affinity_by_default():
    assert 1 <= resources.cpu_count() <= len(os.sched_getaffinity(0))
    assert backend.cpu_count is resources.cpu_count


def test_setting_overrides_and_is_read_when_used(monkeypatch):
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "3")
    assert backend.num_threads() == 3
    _, kwargs = backend._fft_module(np)
    assert kwargs == {"workers": 3}
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="CONVCORE_NUM_THREADS must be a positive integer, got '0'"):
        backend.num_threads()
    monkeypatch.delenv("CONVCORE_NUM_THREADS")
    assert backend.num_threads() == resources.cpu_count()


def test_matmul_pool_has_the_configured_threads(monkeypatch):
    """A large product is split over exactly CONVCORE_NUM_THREADS pool threads, and is still right."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 96, 128)), rng.standard_normal((64, 128, 96))
    for threads in (3, 1):
        monkeypatch.setenv("CONVCORE_NUM_THREADS", str(threads))
        seen = set()
        real_split = backend.run_split

        def spy(count, length, task):
            seen.add(count)
            return real_split(count, length, task)

        monkeypatch.setattr(backend, "run_split", spy)
        monkeypatch.setattr(backend, "SPLIT_WORK", 1)
        np.testing.assert_allclose(backend.matmul(np, a, b), np.matmul(a, b), rtol=1e-12)
        assert seen == ({threads} if threads > 1 else set())
        if threads > 1:
            assert backend._pool[0] == threads
