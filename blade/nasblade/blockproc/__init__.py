"""The block processor (the blade's second processor): ``core.BlockProcessor`` ties together the
file processor's NBD server (``proxy``), the reconnecting NBD client pools to the controller
(``upstream``), a synchronous device adapter for the processor-info and program code
(``syncdev``), its HTTP APIs (``api``: the blade management API and the file processor's
local API) and the block processor's program (``main``; the ``nasblade block-processor`` role
is ``nasblade.cluster.role``, which adds the cluster member through ``main.run``'s hook).
"""
