"""The module kopf loads: it registers every handler and configures the operator.

Importing this module registers the DiskArray handlers (``diskarray/handlers.py``) and the
ClusterGroup handlers (``clustergroup/handlers.py``, with its indexes) with kopf's default
registry; ``main`` (the ``nasblade operator`` command) and the tests
(``kopf.testing.KopfRunner(["run", "-m", "nasblade_operator.handlers", ...])``) both load it
this way. The startup handler ``configure`` creates the operator's state (``state.py``) and
puts it in kopf's ``memo``, which kopf hands to every handler; ``shutdown`` closes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, cast

import kopf
from nasblade import ready

from nasblade_operator import kube, metrics, state
from nasblade_operator.clustergroup import handlers as clustergroup_handlers
from nasblade_operator.diskarray import handlers as diskarray_handlers

__all__ = ["LeanDiffBaseStorage", "clustergroup_handlers", "configure", "diskarray_handlers", "login", "shutdown"]

FINALIZER = "nasblade.io/finalizer"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
    """kopf settings: our finalizer name, progress in annotations, only our own Events; the
    operator state in ``memo`` (a new one per start: nothing is left of a previous run).

    kopf would also turn handler log records into Events (its "failed temporarily" retries
    as type Error); ``events.py`` posts the Events a user needs, so log records stay logs.
    """
    from nasblade_operator import settings as nb_settings

    config = nb_settings.current()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="nasblade.io")
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(prefix="nasblade.io", key="last-handled-configuration")
    settings.posting.level = logging.CRITICAL
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A DiskArray reconcile may wait in place for its controller pod (up to CONTROLLER_WAIT):
    # enough workers that 100 arrays created at once all wait side by side.
    settings.queueing.worker_limit = 256
    # kube.py and the program seeding run blocking calls in threads: enough of them that a slow
    # API server does not queue every handler behind a few in-flight requests.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=kube.POOL_SIZE, thread_name_prefix="nasblade-io"))
    memo.state = state.OperatorState(kube=kube.Kube.from_env())
    metrics.start(config.metrics_port)
    logger.info("nasblade operator: image %s, metrics on :%s", config.image, config.metrics_port or "off")
    ready.announce("operator", {"metrics": f"http://0.0.0.0:{config.metrics_port}/metrics" if config.metrics_port else None})


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base, built without deep-copying what it drops at once.

    kopf builds the "essence" of every DiskArray and ClusterGroup event by deep-copying the
    whole body and then deleting ``status`` and all of ``metadata`` but labels and
    annotations; our statuses (LU layout, portions, blades, histories) and the managed fields
    made that copy the largest single CPU cost of an event. This hands kopf the body without
    them, so the essence is the same (``tests/operator/test_diffbase.py`` compares).
    """

    KEPT_METADATA = ("name", "namespace", "uid", "labels", "annotations", "ownerReferences")

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        if extra_fields:  # a handler watching status fields: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata", {})
        lean = {k: v for k, v in body.items() if k not in ("status", "metadata")}
        lean["metadata"] = {k: meta[k] for k in self.KEPT_METADATA if k in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Authenticate through pykube-ng only: the operator's one Kubernetes client library.

    Without an explicit login handler kopf also tries the official ``kubernetes`` client (it is
    installed for other tools), whose kubeconfig default is fixed when it is first imported;
    one library, one login.
    """
    return kopf.login_via_pykube(**kwargs)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Close the operator state (its HTTP session to controllers and blades)."""
    st = getattr(memo, "state", None)
    if isinstance(st, state.OperatorState):
        await st.close()

