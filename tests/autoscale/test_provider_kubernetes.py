"""The kubernetes provider against a fake API server, and the shipped
manifests checked against the official client's models.

The fake answers the few REST calls the provider makes and plays the
ReplicaSet: scaling up adds a pod with a fresh name, scaling down removes the
pod with the lowest pod-deletion-cost (as Kubernetes does), so the test sees
that ``destroy`` removes exactly the pod it was given.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from spear import errors
from spear.config import load_config
from spear.autoscale.providers.base import NodeType, load

k8s = pytest.importorskip("kubernetes")

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
COST = "controller.kubernetes.io/pod-deletion-cost"
SELECTOR = {"app.kubernetes.io/name": "spearlet"}


class FakeCluster:
    """One namespace ``spear`` with one Deployment ``spearlet`` and its pods."""

    def __init__(self, cluster: str = "c1", max_pods: int = 100) -> None:
        self.cluster = cluster
        self.max_pods = max_pods  # a quota: replicas beyond it get no pod
        self.replicas = 0
        self.pods: dict[str, dict] = {}
        self.serial = itertools.count(1)
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def reconcile(self) -> None:
        while len(self.pods) < min(self.replicas, self.max_pods):
            name = f"spearlet-{next(self.serial):05x}"
            self.pods[name] = {"metadata": {
                "name": name, "namespace": "spear", "annotations": {},
                "labels": {**SELECTOR, "spear.autoscaler": self.cluster, "spear.node-type": "small"},
                "creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}}
        while len(self.pods) > self.replicas:
            victim = min(self.pods, key=lambda n: (int(self.pods[n]["metadata"]["annotations"].get(COST, 0)), n))
            del self.pods[victim]

    def deployment(self) -> dict:
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "spearlet", "namespace": "spear"},
                "spec": {"replicas": self.replicas, "selector": {"matchLabels": SELECTOR},
                         "template": {"metadata": {"labels": SELECTOR},
                                      "spec": {"containers": [{"name": "spearlet", "image": "x"}]}}}}

    def scale(self) -> dict:
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": "spearlet", "namespace": "spear"},
                "spec": {"replicas": self.replicas}, "status": {"replicas": len(self.pods)}}

    def pod_list(self, selector: str) -> dict:
        wanted = dict(kv.split("=", 1) for kv in selector.split(",") if kv)
        items = [p for p in self.pods.values()
                 if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}

    def answer(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        with self.lock:
            self.calls.append((method, path))
            if path == "/apis/apps/v1/namespaces/spear/deployments/spearlet" and method == "GET":
                return 200, self.deployment()
            if path == "/apis/apps/v1/namespaces/spear/deployments/spearlet/scale":
                if method == "PATCH":
                    self.replicas = body["spec"]["replicas"]
                    self.reconcile()
                return 200, self.scale()
            if path == "/api/v1/namespaces/spear/pods" and method == "GET":
                return 200, self.pod_list(query.get("labelSelector", [""])[0])
            m = re.fullmatch(r"/api/v1/namespaces/spear/pods/([^/]+)", path)
            if m and method == "PATCH":
                pod = self.pods.get(m.group(1))
                if pod is None:
                    return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404}
                pod["metadata"]["annotations"].update(body["metadata"]["annotations"])
                return 200, pod
            return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}


@pytest.fixture
def fake():
    state = FakeCluster()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, reply = state.answer(self.command, url.path, parse_qs(url.query), body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = _serve

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def provider(fake, **options):
    return load("kubernetes")(options={"cluster": fake.cluster, "host": fake.url, "timeout": "2", **options})


SMALL = NodeType(name="small", provider="kubernetes")


def test_create_list_destroy_the_right_pod(fake, arun):
    p = provider(fake)
    a, b, c = (arun(p.create(SMALL, f"ignored-{i}")) for i in range(3))
    assert fake.replicas == 3 and sorted(fake.pods) == sorted(h.name for h in (a, b, c))
    assert a.ref == f"spear/spearlet/{a.name}" and a.node_type == "small"
    # a new provider object finds them
    found = arun(provider(fake).list())
    assert sorted((h.name, h.node_type) for h in found) == sorted((h.name, "small") for h in (a, b, c))
    # the middle one goes, not the newest nor the oldest
    arun(p.destroy(b))
    assert fake.replicas == 2 and sorted(fake.pods) == sorted([a.name, c.name])
    arun(p.destroy(b))  # idempotent: the pod is gone, nothing is scaled
    assert fake.replicas == 2
    assert ("PATCH", "/apis/apps/v1/namespaces/spear/deployments/spearlet/scale") in fake.calls


def test_no_new_pod_is_a_refusal(fake, arun):
    fake.max_pods = 1
    p = provider(fake)
    arun(p.create(SMALL, "n1"))
    with pytest.raises(errors.Unavailable, match="no new pod"):
        arun(p.create(SMALL, "n2"))
    assert fake.replicas == 1  # the replica that made no pod is given back


def test_unknown_deployment_or_server_down_is_a_refusal(fake, arun):
    other = NodeType(name="big", provider="kubernetes", options={"deployment": "nope"})
    with pytest.raises(errors.NotFound):
        arun(provider(fake).create(other, "n"))
    down = load("kubernetes")(options={"host": "http://127.0.0.1:9", "timeout": "1"})
    with pytest.raises(errors.Unavailable):
        arun(down.list())


def _manifest_docs():
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


@pytest.mark.parametrize("where,doc", list(_manifest_docs()),
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifests_are_valid_api_objects(where, doc):
    group, _, version = doc["apiVersion"].rpartition("/")
    model = getattr(k8s.client, f"V1{doc['kind']}")
    assert version == "v1", f"{where}: {doc['apiVersion']}"
    # the client's models forbid unknown fields at every depth: a misspelt key fails here
    obj = model.model_validate(doc)
    assert obj.metadata.name and (obj.metadata.namespace == "spear" or doc["kind"] == "Namespace")


def test_manifest_check_catches_a_misspelt_key():
    doc = dict(next(d for _, d in _manifest_docs() if d["kind"] == "Deployment"))
    doc["spec"] = {**doc["spec"], "replica": 1}
    with pytest.raises(ValueError, match="replica"):
        k8s.client.V1Deployment.model_validate(doc)


def test_manifests_fit_the_provider(tmp_path):
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _manifest_docs()}
    spearlet = docs[("Deployment", "spearlet")]
    labels = spearlet["spec"]["template"]["metadata"]["labels"]
    assert "spear.autoscaler" in labels and "spear.node-type" in labels
    assert spearlet["spec"]["selector"]["matchLabels"].items() <= labels.items()
    args = spearlet["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--name") + 1] == "$(POD_NAME)"
    # the ConfigMap's spear.toml is a valid Spear configuration
    toml = tmp_path / "spear.toml"
    toml.write_text(docs[("ConfigMap", "spear-config")]["data"]["spear.toml"])
    cfg = load_config(toml, env={})
    assert cfg.sms.listen == "tcp://0.0.0.0:7700" and cfg.spearlet.sms.endswith(":7700")
