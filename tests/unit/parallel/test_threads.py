"""A rank's cores: its share of the node, split between subnetwork workers and BLAS threads."""
from mpisub.parallel import threads


def test_split_cores_between_subnetwork_workers_and_blas():
    assert threads.split_cores(2, 4) == (2, 1)      # 4 subnetworks on 2 cores: 2 side by side, 1 BLAS thread each
    assert threads.split_cores(16, 4) == (4, 4)
    assert threads.split_cores(8, 1) == (1, 8)      # one subnetwork (gd, dropout): all cores to BLAS
    assert threads.split_cores(1, 10) == (1, 1)


def test_threads_per_rank():
    node = set(range(16))
    assert threads.threads_per_rank(node, [node] * 4) == 4                 # 4 unbound ranks share 16 cores
    assert threads.threads_per_rank(node, [node] * 32) == 1                # oversubscribed: one each
    cgroup = {4, 5, 6, 7}
    assert threads.threads_per_rank(cgroup, [cgroup] * 4) == 1             # 4 ranks in a 4-core allocation
    bound = [{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}]
    assert threads.threads_per_rank(bound[1], bound) == 4                  # each bound to its own 4 cores
