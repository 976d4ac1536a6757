"""contract.cpus: thread pools are sized from what the process may use, container CPU limits included."""
from pathlib import Path

import pytest

from contract import cpus
from contract.cpus import cgroup_cpu_limit


def _tree(tmp_path: Path, files: dict[str, str], self_cgroup: str) -> tuple[Path, Path]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "self_cgroup").write_text(self_cgroup)
    return tmp_path, tmp_path / "self_cgroup"


@pytest.mark.parametrize("files, self_cgroup, limit", [
    ({"cpu.max": "200000 100000\n"}, "0::/\n", 2.0),  # v2, in a container: `docker run --cpus 2`
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # v2 without a quota
    ({"cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "150000 100000\n"}, "0::/kubepods/pod1\n", 1.5),  # host
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/\n", 0.5),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n", None),  # v1, none
    ({}, "0::/\n", None),  # no cgroup files at all (macOS, a sandbox)
    ({"cpu.max": "garbage\n"}, "0::/\n", None),
])
def test_the_cgroup_quota_is_read_from_v1_and_v2(tmp_path, files, self_cgroup, limit):
    root, proc = _tree(tmp_path, files, self_cgroup)
    assert cgroup_cpu_limit(root, proc) == limit


@pytest.mark.parametrize("quota, expected", [(None, 8), (2.0, 2), (2.5, 2), (0.5, 1), (64.0, 8)])
def test_worker_cpus_is_the_affinity_capped_by_the_quota(monkeypatch, quota, expected):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: quota)
    assert cpus.worker_cpus() == expected
