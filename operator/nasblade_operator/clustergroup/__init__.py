"""The ClusterGroup resource: ``spec`` (parse and validate), ``builders`` (blade pods and NFS
Services as dicts), ``plan`` (the sans-I/O decisions: failover, give-back, rollout, backups)
and ``handlers`` (kopf handlers that observe, call ``plan`` and carry out its actions).
"""
