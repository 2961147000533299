"""Which array a command talks to, and the one place errors become exit codes.

Target selection (the same flags on every terminal command):

- standalone: ``--data-dir DIR`` (default ``$NASBLADE_DATA_DIR``), with ``--config FILE`` (the
  file given to ``nasblade up``; default ``$NASBLADE_CONFIG``) and ``--controller URL``;
- Kubernetes: ``--kube`` and/or ``-n NAMESPACE``, ``--context``, ``--kubeconfig``; the default
  when no data directory is given and a kubeconfig exists (``$KUBECONFIG``, ``~/.kube/config``).
  ``kubectl nas`` always means Kubernetes.

``open_source`` builds the ``Source``; ``guarded`` runs a command body and turns
``TerminalError`` into ``nasblade <command>: <message>`` on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from nasblade.terminal.errors import TerminalError, UsageError
from nasblade.terminal.source import Source


def add_target_arguments(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    t = parser.add_argument_group("target (standalone array or Kubernetes)")
    t.add_argument("--data-dir", type=Path, default=None,
                   help="data directory of a standalone array (`nasblade up --data-dir`); default $NASBLADE_DATA_DIR")
    t.add_argument("--config", type=Path, default=None,
                   help="the standalone array's configuration file (as given to `nasblade up`); default $NASBLADE_CONFIG")
    t.add_argument("--controller", metavar="URL", help="controller control API URL (overrides the configuration)")
    t.add_argument("--kube", action="store_true", help="talk to Kubernetes (the default without a data directory)")
    t.add_argument("-n", "--namespace", help="Kubernetes namespace (default: the context's, else 'default')")
    t.add_argument("--context", help="kubeconfig context (default: the current one)")
    t.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default $KUBECONFIG, then ~/.kube/config)")
    t.add_argument("--request-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="timeout of each request to an endpoint (default 5)")
    if output:
        parser.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                            help="output format (default: table)")


def _kubeconfig(args: argparse.Namespace) -> Path | None:
    if args.kubeconfig:
        return Path(args.kubeconfig)
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    home = Path.home() / ".kube" / "config"
    return home if home.exists() else None


def wants_kube(args: argparse.Namespace) -> bool:
    if getattr(args, "kube", False) or getattr(args, "force_kube", False):
        return True
    if args.data_dir is not None or os.environ.get("NASBLADE_DATA_DIR"):
        return False
    return bool(args.namespace or args.context or _kubeconfig(args))


def open_source(args: argparse.Namespace) -> Source:
    if wants_kube(args):
        from nasblade.terminal.kube import KubeSource

        if args.data_dir is not None and not getattr(args, "force_kube", False):
            raise UsageError("give either --data-dir (standalone) or --kube (Kubernetes), not both")
        kubeconfig = _kubeconfig(args)
        return KubeSource(kubeconfig=kubeconfig, context=args.context, namespace=args.namespace,
                          timeout=args.request_timeout)
    data_dir = args.data_dir or (Path(os.environ["NASBLADE_DATA_DIR"]) if os.environ.get("NASBLADE_DATA_DIR") else None)
    if data_dir is None:
        raise UsageError("no target: give --data-dir DIR (standalone array) or --kube / -n NAMESPACE (Kubernetes)")
    from nasblade.terminal.standalone import StandaloneSource

    config = args.config or (Path(os.environ["NASBLADE_CONFIG"]) if os.environ.get("NASBLADE_CONFIG") else None)
    return StandaloneSource(data_dir.resolve(), config=config, controller=args.controller, timeout=args.request_timeout)


def guarded(name: str, body: Callable[[], int]) -> int:
    """Run ``body``; report a ``TerminalError`` (or Ctrl-C) the way a command line tool should."""
    try:
        return body()
    except TerminalError as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted\n")
        return 130
