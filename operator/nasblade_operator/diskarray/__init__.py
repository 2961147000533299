"""The DiskArray resource: ``spec`` (parse and validate), ``builders`` (child objects as
dicts), ``handlers`` (kopf handlers that create them and drive the controller's control API).
"""
