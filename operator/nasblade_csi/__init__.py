"""nasblade's CSI driver (``nasblade-csi``): Kubernetes volumes on a nasblade disk array.

Identity, Controller and Node services of the Container Storage Interface over gRPC on a Unix
socket. The controller service makes each volume a file system of its own on an LU of the
array (created, formatted, grown, snapshotted and cloned through the controller's control
API and its point-in-time copy engine) and keeps its records in a catalog on the array itself
(``catalog``); the node service mounts a volume's NFSv3 export. docs/csi.md.
"""
