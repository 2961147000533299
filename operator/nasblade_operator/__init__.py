"""nasblade_operator: the kopf operator that reconciles DiskArray and ClusterGroup resources.

It lives in the ``operator/`` folder of the repository but is imported as
``nasblade_operator``: ``operator`` is a standard-library module and must stay importable.
"""

__all__: list[str] = []
