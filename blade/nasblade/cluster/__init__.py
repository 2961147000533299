"""Cluster groups (issue 5): heartbeat watch, takeover with fencing, give-back, check-takeover,
processor-information backups (on demand, interval, load-aware, cross-group) and area failover.

- ``core``: the sans-I/O rules (liveness from heartbeat counters, who takes which file system,
  check-takeover, backup trigger table, merging two group records).
- ``config``: the ``--cluster-config`` JSON a block processor is started with.
- ``member``: ``ClusterMember``, the runtime inside the block processor that carries the rules
  out with the block processor's portion store, control client and NBD pools.
- ``api``: its routes on the blade management API (``/v1/cluster/...``).
- ``fpside``: the file processor's self-fence when its block processor is gone.
- ``cli``: ``nasblade cluster ...`` (the management terminal's commands).
"""
