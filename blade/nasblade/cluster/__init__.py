"""Cluster groups (issue 5): heartbeat watch, takeover with fencing, give-back, check-takeover,
processor-information backups (on demand, interval, load-aware, cross-group) and area failover.

- ``core``: the sans-I/O rules (liveness from heartbeat counters, who takes which file system,
  check-takeover, backup trigger table, merging two group records).
- ``config``: the ``--cluster-config`` JSON a block processor is started with.
- ``member``: ``ClusterMember``, the runtime inside the block processor: the tick and the
  composition of its parts --
  ``liveness`` (``GroupView``: the group record, the peers' slots, who is alive),
  ``takeover`` (what this blade serves; fencing, takeover, release, give-back, power fencing),
  ``areas`` (area failover between the portion and the backup area),
  ``backups`` (copies through the controller's copy engine, the backup scheduler).
- ``records``: the typed records those parts keep (ownership events, backup records, the
  scheduler's state) and ``ClusterError``.
- ``api``: its routes on the blade management API (``/v1/cluster/...``), where the records
  become JSON.
- ``role``: ``nasblade block-processor``: the block processor with its cluster member.

The file processor's side of a takeover (its fail-stop device and self-fence) lives in
``nasblade.fileproc.failstop``; the command line, in ``nasblade.terminal.commands.cluster``.
"""
