"""The ``kubernetes`` provider: nodes are replicas of a Spearlet Deployment.

``create`` scales the Deployment up by one and waits until the new pod has a
name; the pod's Spearlet joins the SMS under that name (the manifests in
deploy/kubernetes/ pass the pod name through the downward API), so the
handle's ``name`` is the pod's, not the one asked for. ``destroy`` gives the
drained pod the lowest ``controller.kubernetes.io/pod-deletion-cost`` and then
scales down by one: the ReplicaSet removes exactly that pod. (A StatefulSet
always removes its highest ordinal, which is why the autoscaled Spearlets are a
Deployment.) The official ``kubernetes`` client is imported when the provider
is built; its blocking calls run in a worker thread, one change at a time.

Provider options (node types may override ``namespace`` and ``deployment``):
``cluster`` (default ``spear``), ``namespace`` (default ``spear``), ``deployment`` (default ``spearlet``),
``kubeconfig`` and ``context`` (default: in-cluster, else ``~/.kube/config``),
``host`` (an API server URL used as is, no credentials: for proxies and tests),
``timeout`` (seconds to wait for a new pod's name, default 120).
:meth:`list` finds the pods by the Deployment's selector plus
``spear.autoscaler=<cluster>``, which the pod template must carry.
"""

from __future__ import annotations

import asyncio
import time

from ... import errors
from ...config import DEFAULT_SMS
from .base import NodeHandle, NodeType

LABEL = "spear.autoscaler"
TYPE_LABEL = "spear.node-type"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: the lowest cost a pod can have (an int32): this pod goes first
LOWEST_COST = str(-(2**31))


class KubernetesProvider:
    """Scales Spearlet Deployments; see the module docstring for options."""

    name = "kubernetes"

    def __init__(self, *, sms: str = DEFAULT_SMS, workdir: str = "",
                 options: dict[str, str] | None = None) -> None:
        """The pods read the SMS address from the ConfigMap and keep no state here:
        ``sms`` and ``workdir`` are accepted so every provider is built alike."""
        try:
            import kubernetes
        except ImportError:
            raise errors.ConfigError("the kubernetes provider needs the kubernetes client "
                                     "(pip install 'spear[autoscale]')") from None
        self.defaults = dict(options or {})
        self.cluster = self.defaults.pop("cluster", "spear")
        import urllib3  # the client's transport

        self._k8s = kubernetes
        self._urllib3 = urllib3
        api = self._api_client()
        self._apps = kubernetes.client.AppsV1Api(api)
        self._core = kubernetes.client.CoreV1Api(api)
        self._lock = asyncio.Lock()

    def _api_client(self):
        k = self._k8s
        opts = self.defaults
        if opts.get("host"):
            conf = k.client.Configuration()
            conf.host = opts["host"]
            return k.client.ApiClient(conf)
        try:
            if opts.get("kubeconfig") or opts.get("context"):
                raise k.config.ConfigException("asked for a kubeconfig")
            k.config.load_incluster_config()
        except k.config.ConfigException:
            try:
                k.config.load_kube_config(config_file=opts.get("kubeconfig") or None,
                                          context=opts.get("context") or None)
            except (k.config.ConfigException, OSError) as exc:
                raise errors.ConfigError(f"kubernetes provider: no cluster credentials: {exc}") from None
        return k.client.ApiClient()

    def _where(self, node_type: NodeType | None = None) -> tuple[str, str]:
        opts = {**self.defaults, **(node_type.options if node_type else {})}
        return opts.get("namespace", "spear"), opts.get("deployment", "spearlet")

    def _call(self, fn, *args, **kwargs):
        """One API call; a refusal becomes Unavailable (NotFound for a 404)."""
        try:
            return fn(*args, **kwargs)
        except self._k8s.client.exceptions.ApiException as exc:
            cls = errors.NotFound if exc.status == 404 else errors.Unavailable
            raise cls(f"kubernetes provider: {fn.__name__}: {exc.status} {exc.reason}") from None
        except (OSError, self._urllib3.exceptions.HTTPError) as exc:  # no answer at all
            raise errors.Unavailable(f"kubernetes provider: API server unreachable: {exc}") from None

    def _selector(self, namespace: str, deployment: str) -> str:
        dep = self._call(self._apps.read_namespaced_deployment, deployment, namespace)
        labels = {**(dep.spec.selector.match_labels or {}), LABEL: self.cluster}
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    def _pods(self, namespace: str, selector: str) -> list:
        pods = self._call(self._core.list_namespaced_pod, namespace, label_selector=selector)
        return [p for p in pods.items if p.metadata.deletion_timestamp is None
                and (p.status is None or p.status.phase not in ("Succeeded", "Failed"))]

    def _scale(self, namespace: str, deployment: str, delta: int) -> int:
        scale = self._call(self._apps.read_namespaced_deployment_scale, deployment, namespace)
        replicas = max(0, (scale.spec.replicas or 0) + delta)
        self._call(self._apps.patch_namespaced_deployment_scale, deployment, namespace,
                   {"spec": {"replicas": replicas}})
        return replicas

    def _create(self, node_type: NodeType) -> NodeHandle:
        namespace, deployment = self._where(node_type)
        selector = self._selector(namespace, deployment)
        before = {p.metadata.name for p in self._pods(namespace, selector)}
        self._scale(namespace, deployment, +1)
        deadline = time.monotonic() + float(self.defaults.get("timeout", 120))
        while time.monotonic() < deadline:
            new = [p.metadata.name for p in self._pods(namespace, selector)
                   if p.metadata.name not in before]
            if new:
                return NodeHandle(provider=self.name, node_type=node_type.name,
                                  ref=f"{namespace}/{deployment}/{new[0]}", name=new[0],
                                  created_at=time.time())
            time.sleep(0.2)
        # give the replica back, or it would come up later as a node nobody asked for
        self._scale(namespace, deployment, -1)
        raise errors.Unavailable(f"kubernetes provider: {namespace}/{deployment} made no new pod "
                                 f"(quota, or no room in the cluster?)")

    async def create(self, node_type: NodeType, name: str) -> NodeHandle:
        """Add a replica; the node joins under its pod's name (``name`` is not used)."""
        async with self._lock:
            return await asyncio.to_thread(self._create, node_type)

    def _destroy(self, handle: NodeHandle) -> None:
        namespace, deployment, pod = handle.ref.split("/", 2)
        try:
            self._call(self._core.patch_namespaced_pod, pod, namespace,
                       {"metadata": {"annotations": {DELETION_COST: LOWEST_COST}}})
        except errors.NotFound:
            return  # already gone: the ReplicaSet replaced it or someone deleted it
        self._scale(namespace, deployment, -1)

    async def destroy(self, handle: NodeHandle) -> None:
        """Remove exactly this pod by marking it cheapest to delete, then scaling down."""
        async with self._lock:
            await asyncio.to_thread(self._destroy, handle)

    def _list(self) -> list[NodeHandle]:
        namespace, deployment = self._where()
        out = []
        for p in self._pods(namespace, self._selector(namespace, deployment)):
            meta = p.metadata
            if (meta.annotations or {}).get(DELETION_COST) == LOWEST_COST:
                continue  # being destroyed
            created = meta.creation_timestamp.timestamp() if meta.creation_timestamp else 0.0
            out.append(NodeHandle(provider=self.name, node_type=(meta.labels or {}).get(TYPE_LABEL, ""),
                                  ref=f"{namespace}/{deployment}/{meta.name}", name=meta.name,
                                  created_at=created))
        return out

    async def list(self) -> list[NodeHandle]:
        """The live pods of the provider's Deployment that belong to this cluster."""
        return await asyncio.to_thread(self._list)
