"""The management terminal (claims 10 and 17): the administrator's view of an array.

``nasblade status|volumes|backup|takeover|giveback|map|events|watch|completion|version`` and
``nasblade software rollout|list``, and the same commands as the kubectl plugin ``kubectl nas``
(plus the hidden ``__complete`` the completion scripts call for names from the array).

How the parts fit:

- ``target`` turns the command line (``--data-dir`` / ``--kube -n NS --context C``) into a
  ``Source``: ``standalone.StandaloneSource`` reads a ``nasblade up`` array through the
  controller's control API (``nasblade.controller.apiclient.ControlClient``), the blades'
  management API (``nasblade.bladeapi.client.BladeClient``) and the processor-information
  portions (``nasblade.procinfo.portion.PortionStore`` over NBD, read only);
  ``kube.KubeSource`` reads the DiskArray / ClusterGroup resources and Events through
  pykube-ng, the operator's Kubernetes library.
- Both produce the same ``model.Snapshot`` (plain JSON-able TypedDicts), which is what
  ``-o json`` prints. ``health`` (pure) classifies blades; ``plan`` (pure) answers takeover
  dry runs and turns two snapshots into events; ``render`` draws rich tables; ``svgmap``
  draws the SVG picture of the array.
- ``commands`` holds one small function per subcommand; ``cli`` wires them into argparse for
  both ``nasblade`` (through ``nasblade.cli.COMMANDS``) and ``kubectl-nas``.

Exit codes: 0 done, 1 the operation ran and failed (a backup failed, a takeover is not
possible), 2 the request could not be made (bad arguments, unknown name, operation not
available in this release), 3 the target is unreachable, 4 timed out while following.
"""
