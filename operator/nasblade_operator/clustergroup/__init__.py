"""The ClusterGroup resource: ``spec`` (parse and validate), ``builders`` (blade pods and NFS
Services as dicts), ``plan`` (the sans-I/O decisions: failover, give-back, rollout, backups),
``status`` (the sans-I/O status builder), ``handlers`` (the kopf handlers, short) over
``indexes``, ``portions`` (claim and release), ``daemon`` (one per group: observe, plan, act),
``actor`` (pods, moves, Services), ``backups`` and ``runtime`` (a daemon's memory).
"""
