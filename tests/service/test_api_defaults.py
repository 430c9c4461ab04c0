"""How many API processes `convnd api` runs when CONVND_API_PROCESSES is not set: two where two whole
CPUs are usable (affinity mask and cgroup quota), else one."""
from __future__ import annotations

import os

import pytest

import convcore.resources
from app.core import config


@pytest.mark.parametrize(("cpus", "quota", "expected"), [
    ({0}, None, 1),
    ({0, 1}, None, 2),
    ({0, 1, 2, 3, 4, 5, 6, 7}, None, 2),     # never more than two: the other cores are the workers'
    ({0, 1, 2, 3}, 1.5, 1),                  # 1.5 CPUs' worth of time is not room for a second process
    ({0, 1, 2, 3}, 2.0, 2),
])
def test_default_api_processes_follow_usable_cpus(monkeypatch, cpus, quota, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    monkeypatch.setattr(convcore.resources, "cgroup_cpu_quota", lambda root, self_cgroup: quota)
    assert config.default_api_processes() == expected


def test_settings_leave_the_count_to_start_up(monkeypatch):
    """Reading the settings (every `convnd` command does) decides nothing and imports nothing heavy;
    an explicit count is kept as given."""
    monkeypatch.delenv("CONVND_API_PROCESSES", raising=False)
    assert config.Settings().api_processes is None
    monkeypatch.setenv("CONVND_API_PROCESSES", "3")
    assert config.Settings().api_processes == 3
