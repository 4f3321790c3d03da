#!/usr/bin/env python3
"""Renders a chart with every value of its values.yaml set to a non-default value and checks
that each one reached the rendered manifests (or, for a value documented as having no effect,
that the chart still renders with it).

    values_check.py CHART_DIR     (sandbox-controller or sandbox-manager; needs helm on PATH)

The table below names, per value, a check over the rendered objects. Values are rendered in a
few groups, because some exclude others (fullnameOverride hides nameOverride, rbac.create=false
removes what other checks look at). The script fails when values.yaml has a key that no table
entry covers, so a new value cannot go unchecked. Prints one line per value and `N passed,
M failed` last.
"""

import os
import subprocess
import sys
import tempfile

import yaml

NO_EFFECT = "no effect"


# ---------------------------------------------------------------- rendered-object helpers ----


class Rendered:
    def __init__(self, docs):
        self.docs = [d for d in docs if d]

    def all(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, name=None, component=None):
        found = [
            d
            for d in self.all(kind)
            if (name is None or d["metadata"]["name"] == name)
            and (
                component is None
                or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
            )
        ]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} {kind} named {name} (component {component})")
        return found[0]

    def deploy(self, component=None, name=None):
        return self.one("Deployment", name=name, component=component)

    def pod(self, component=None, name=None):
        return self.deploy(component, name)["spec"]["template"]

    def container(self, component=None, name=None):
        return self.pod(component, name)["spec"]["containers"][0]

    def args(self, component=None, name=None):
        return self.container(component, name)["args"]

    def env(self, component=None, name=None):
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.container(component, name).get("env", [])}

    def names(self, kind):
        return [d["metadata"]["name"] for d in self.all(kind)]


def has_arg(arg, component=None):
    return lambda r: arg in r.args(component)


# ------------------------------------------------------------------------------ tables ----

# (group, dotted key, value, check(Rendered) -> bool, or NO_EFFECT)
CONTROLLER = [
    ("a", "replicaCount", 3, lambda r: r.deploy()["spec"]["replicas"] == 3),
    ("a", "image.repository", "mirror.example.com/paddock", lambda r: r.container()["image"].startswith("mirror.example.com/paddock:")),
    ("a", "image.tag", "9.9.9", lambda r: r.container()["image"] == "mirror.example.com/paddock:9.9.9"),
    ("a", "image.pullPolicy", "Always", lambda r: r.container()["imagePullPolicy"] == "Always"),
    ("a", "webhook.port", 19443, lambda r: "--webhook-port=19443" in r.args()
        and r.one("Service")["spec"]["ports"][0]["targetPort"] == 19443),
    ("a", "metrics.port", 18443, lambda r: "--metrics-bind-address=:18443" in r.args()),
    ("a", "healthProbe.port", 18081, lambda r: "--health-probe-bind-address=:18081" in r.args()
        and {"containerPort": 18081, "name": "health"} in r.container()["ports"]),
    ("a", "resources.limits.cpu", "3", lambda r: r.container()["resources"]["limits"]["cpu"] == "3"),
    ("a", "resources.limits.memory", "5Gi", lambda r: r.container()["resources"]["limits"]["memory"] == "5Gi"),
    ("a", "resources.requests.cpu", "500m", lambda r: r.container()["resources"]["requests"]["cpu"] == "500m"),
    ("a", "resources.requests.memory", "1Gi", lambda r: r.container()["resources"]["requests"]["memory"] == "1Gi"),
    # The release namespace wins, as in the original chart (see values.yaml).
    ("a", "namespace.name", "other-ns", NO_EFFECT),
    ("a", "serviceAccount.automount", False, lambda r: r.one("ServiceAccount")["automountServiceAccountToken"] is False),
    ("a", "serviceAccount.annotations", {"eks.amazonaws.com/role-arn": "arn:x"},
        lambda r: r.one("ServiceAccount")["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:x"}),
    ("a", "serviceAccount.name", "ctl-sa", lambda r: r.one("ServiceAccount")["metadata"]["name"] == "ctl-sa"
        and r.pod()["spec"]["serviceAccountName"] == "ctl-sa"
        and r.one("ClusterRoleBinding")["subjects"][0]["name"] == "ctl-sa"),
    ("a", "imagePullSecrets", [{"name": "regcred"}], lambda r: r.pod()["spec"]["imagePullSecrets"] == [{"name": "regcred"}]),
    ("a", "nameOverride", "ctl", lambda r: r.deploy()["metadata"]["name"] == "rel-ctl"),
    ("a", "podAnnotations", {"a.example.com/x": "1"}, lambda r: r.pod()["metadata"]["annotations"]["a.example.com/x"] == "1"),
    ("a", "podLabels", {"team": "infra"}, lambda r: r.pod()["metadata"]["labels"]["team"] == "infra"),
    ("a", "podSecurityContext.runAsNonRoot", False, lambda r: r.pod()["spec"]["securityContext"]["runAsNonRoot"] is False),
    ("a", "podSecurityContext.seccompProfile.type", "Unconfined",
        lambda r: r.pod()["spec"]["securityContext"]["seccompProfile"]["type"] == "Unconfined"),
    ("a", "securityContext.allowPrivilegeEscalation", True, lambda r: r.container()["securityContext"]["allowPrivilegeEscalation"] is True),
    ("a", "securityContext.capabilities.drop", ["NET_RAW"], lambda r: r.container()["securityContext"]["capabilities"]["drop"] == ["NET_RAW"]),
    ("a", "securityContext.readOnlyRootFilesystem", False, lambda r: r.container()["securityContext"]["readOnlyRootFilesystem"] is False),
    ("a", "securityContext.runAsUser", 1001, lambda r: r.container()["securityContext"]["runAsUser"] == 1001),
    ("a", "securityContext.runAsGroup", 1002, lambda r: r.container()["securityContext"]["runAsGroup"] == 1002),
    ("a", "nodeSelector", {"pool": "system"}, lambda r: r.pod()["spec"]["nodeSelector"] == {"pool": "system"}),
    ("a", "tolerations", [{"key": "k", "operator": "Exists"}], lambda r: r.pod()["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]),
    ("a", "affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "z", "operator": "Exists"}]}]}}},
        lambda r: "nodeAffinity" in r.pod()["spec"]["affinity"]),
    ("a", "logLevel", "debug", has_arg("--log-level=debug")),
    ("a", "watchNamespace", "team-a", lambda r: "--namespace=team-a" in r.args()
        and all(w["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "team-a"
                for c in r.all("ValidatingWebhookConfiguration") + r.all("MutatingWebhookConfiguration")
                for w in c["webhooks"])),
    ("a", "runtimeImage.repository", "mirror.example.com/paddock-runtime", lambda r: any(a.startswith("--runtime-image=mirror.example.com/paddock-runtime:") for a in r.args())),
    ("a", "runtimeImage.tag", "7.7.7", lambda r: "--runtime-image=mirror.example.com/paddock-runtime:7.7.7" in r.args()),
    ("a", "webhookCerts.secretName", "hook-certs", lambda r: "--webhook-cert-secret=hook-certs" in r.args()
        and r.one("Secret")["metadata"]["name"] == "hook-certs"),
    ("b", "fullnameOverride", "paddock-ctl", lambda r: r.deploy()["metadata"]["name"] == "paddock-ctl"
        and "paddock-ctl-validating" in r.names("ValidatingWebhookConfiguration")
        and "--webhook-config-name=paddock-ctl" in r.args()),
    # serviceAccount.name (set in group a) names the existing account to use
    ("b", "serviceAccount.create", False, lambda r: not r.all("ServiceAccount")
        and r.pod()["spec"]["serviceAccountName"] == "ctl-sa"),
    ("c", "rbac.create", False, lambda r: not r.all("ClusterRole") and not r.all("Role")
        and not r.all("ClusterRoleBinding") and not r.all("RoleBinding")),
]

MGR = "manager"
GW = "gateway"
MANAGER = [
    ("a", "replicaCount", 3, lambda r: r.deploy(MGR)["spec"]["replicas"] == 3),
    ("a", "e2b.domain", "sbx.example.org", lambda r: "--domain=sbx.example.org" in r.args(MGR)
        and "--domain=sbx.example.org" in r.args(GW)
        and {"api.sbx.example.org", "*.sbx.example.org", "sbx.example.org"}
        == {rule["host"] for rule in r.one("Ingress")["spec"]["rules"]}),
    ("a", "e2b.adminApiKey", "e2b_checked_key", lambda r: any(
        s.get("stringData", {}).get("admin-api-key") == "e2b_checked_key" for s in r.all("Secret"))
        and r.env(MGR)["PADDOCK_ADMIN_API_KEY"]["secretKeyRef"]["key"] == "admin-api-key"),
    ("a", "e2b.maxTimeout", 3600, has_arg("--max-timeout=3600", MGR)),
    ("a", "controller.repository", "mirror.example.com/paddock", lambda r: r.container(MGR)["image"].startswith("mirror.example.com/paddock:")),
    ("a", "controller.tag", "9.9.9", lambda r: r.container(MGR)["image"] == "mirror.example.com/paddock:9.9.9"),
    ("a", "controller.pullPolicy", "Always", lambda r: r.container(MGR)["imagePullPolicy"] == "Always"),
    ("a", "controller.logLevel", 2, lambda r: r.env(MGR)["RUST_LOG"] == "info"),
    ("a", "controller.infra", "other", NO_EFFECT),
    ("a", "controller.hostNetwork", True, lambda r: r.pod(MGR)["spec"]["hostNetwork"] is True),
    ("a", "controller.resources.cpu", "3", lambda r: r.container(MGR)["resources"]["limits"]["cpu"] == "3"
        and r.container(MGR)["resources"]["requests"]["cpu"] == "3"),
    ("a", "controller.resources.memory", "5Gi", lambda r: r.container(MGR)["resources"]["limits"]["memory"] == "5Gi"),
    ("a", "controller.maxClaimWorkers", 7, has_arg("--max-claim-workers=7", MGR)),
    ("a", "controller.maxCreateQPS", 9, has_arg("--max-create-qps=9", MGR)),
    ("a", "controller.extProcMaxConcurrency", 10, NO_EFFECT),
    ("a", "proxy.repository", "mirror.example.com/envoy", NO_EFFECT),
    ("a", "proxy.tag", "v1", NO_EFFECT),
    ("a", "proxy.pullPolicy", "Always", NO_EFFECT),
    ("a", "service.type", "NodePort", lambda r: r.one("Service", component=MGR)["spec"]["type"] == "NodePort"),
    ("a", "service.port", 17788, NO_EFFECT),
    ("a", "ingress.className", "nginx", lambda r: r.one("Ingress")["spec"]["ingressClassName"] == "nginx"),
    ("a", "ingress.annotations", {"nginx.ingress.kubernetes.io/proxy-body-size": "0"},
        lambda r: r.one("Ingress")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"),
    ("a", "ingress.certSecretName", "my-tls", lambda r: r.one("Ingress")["spec"]["tls"][0]["secretName"] == "my-tls"),
    ("a", "ingress.dataplaneService", "my-gw", lambda r: r.one("Service", name="my-gw")
        and r.deploy(GW)["metadata"]["name"] == "my-gw"
        and any(p["backend"]["service"]["name"] == "my-gw"
                for rule in r.one("Ingress")["spec"]["rules"] for p in rule["http"]["paths"])),
    ("a", "imagePullSecrets", [{"name": "regcred"}], lambda r: r.pod(MGR)["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        and r.pod(GW)["spec"]["imagePullSecrets"] == [{"name": "regcred"}]),
    ("a", "nameOverride", "mgr", lambda r: r.deploy(MGR)["metadata"]["name"] == "rel-mgr"),
    ("a", "serviceAccount.automount", False, lambda r: all(s["automountServiceAccountToken"] is False for s in r.all("ServiceAccount"))),
    ("a", "serviceAccount.annotations", {"iam.example.com/role": "r"}, lambda r: all(
        s["metadata"]["annotations"]["iam.example.com/role"] == "r" for s in r.all("ServiceAccount"))),
    ("a", "serviceAccount.name", "mgr-sa", lambda r: r.pod(MGR)["spec"]["serviceAccountName"] == "mgr-sa"
        and r.pod(GW)["spec"]["serviceAccountName"] == "mgr-sa-gateway"),
    ("a", "podAnnotations", {"a.example.com/x": "1"}, lambda r: r.pod(MGR)["metadata"]["annotations"]["a.example.com/x"] == "1"),
    ("a", "podLabels", {"team": "infra"}, lambda r: r.pod(MGR)["metadata"]["labels"]["team"] == "infra"),
    ("a", "podSecurityContext.fsGroup", 3000, lambda r: r.pod(MGR)["spec"]["securityContext"]["fsGroup"] == 3000),
    ("a", "podSecurityContext.runAsNonRoot", False, lambda r: r.pod(MGR)["spec"]["securityContext"]["runAsNonRoot"] is False),
    ("a", "podSecurityContext.seccompProfile.type", "Unconfined", lambda r: r.pod(MGR)["spec"]["securityContext"]["seccompProfile"]["type"] == "Unconfined"),
    ("a", "securityContext.capabilities.drop", ["NET_RAW"], lambda r: r.container(MGR)["securityContext"]["capabilities"]["drop"] == ["NET_RAW"]),
    ("a", "securityContext.readOnlyRootFilesystem", False, lambda r: r.container(MGR)["securityContext"]["readOnlyRootFilesystem"] is False),
    ("a", "securityContext.allowPrivilegeEscalation", True, lambda r: r.container(MGR)["securityContext"]["allowPrivilegeEscalation"] is True),
    ("a", "securityContext.runAsNonRoot", False, lambda r: r.container(MGR)["securityContext"]["runAsNonRoot"] is False),
    ("a", "securityContext.runAsUser", 1001, lambda r: r.container(MGR)["securityContext"]["runAsUser"] == 1001),
    ("a", "nodeSelector", {"pool": "system"}, lambda r: r.pod(MGR)["spec"]["nodeSelector"] == {"pool": "system"}),
    ("a", "tolerations", [{"key": "k", "operator": "Exists"}], lambda r: r.pod(MGR)["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]),
    ("a", "affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "z", "operator": "Exists"}]}]}}},
        # Helm merges it with the default (podAntiAffinity stays unless set to null)
        lambda r: "nodeAffinity" in r.pod(MGR)["spec"]["affinity"]),
    ("a", "gateway.replicaCount", 4, lambda r: r.deploy(GW)["spec"]["replicas"] == 4),
    ("a", "gateway.image.repository", "mirror.example.com/gw", lambda r: r.container(GW)["image"].startswith("mirror.example.com/gw:")),
    ("a", "gateway.image.tag", "8.8.8", lambda r: r.container(GW)["image"] == "mirror.example.com/gw:8.8.8"),
    ("a", "gateway.image.pullPolicy", "Always", lambda r: r.container(GW)["imagePullPolicy"] == "Always"),
    ("b", "gateway.imagePullSecrets", [{"name": "gwcred"}], lambda r: r.pod(GW)["spec"]["imagePullSecrets"] == [{"name": "gwcred"}]),
    ("a", "gateway.nameOverride", "x", NO_EFFECT),
    ("a", "gateway.serviceAccount.annotations", {"gw.example.com/a": "b"}, lambda r: r.one("ServiceAccount", component=GW)["metadata"]["annotations"]["gw.example.com/a"] == "b"),
    ("b", "gateway.serviceAccount.name", "gw-sa", lambda r: r.pod(GW)["spec"]["serviceAccountName"] == "gw-sa"
        and r.one("ServiceAccount", name="gw-sa")),
    ("a", "gateway.podAnnotations", {"g.example.com/x": "2"}, lambda r: r.pod(GW)["metadata"]["annotations"]["g.example.com/x"] == "2"),
    ("a", "gateway.podSecurityContext", {"fsGroup": 4000}, lambda r: r.pod(GW)["spec"]["securityContext"] == {"fsGroup": 4000}),
    ("a", "gateway.securityContext", {"runAsUser": 1234}, lambda r: r.container(GW)["securityContext"] == {"runAsUser": 1234}),
    ("a", "gateway.resources.cpu", "1", lambda r: r.container(GW)["resources"]["requests"]["cpu"] == "1"),
    ("a", "gateway.resources.memory", "1Gi", lambda r: r.container(GW)["resources"]["limits"]["memory"] == "1Gi"),
    ("a", "gateway.nodeSelector", {"pool": "edge"}, lambda r: r.pod(GW)["spec"]["nodeSelector"] == {"pool": "edge"}),
    ("a", "gateway.tolerations", [{"key": "edge", "operator": "Exists"}], lambda r: r.pod(GW)["spec"]["tolerations"][0]["key"] == "edge"),
    ("a", "gateway.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "e", "operator": "Exists"}]}]}}},
        lambda r: "nodeAffinity" in r.pod(GW)["spec"]["affinity"] and "podAntiAffinity" in r.pod(GW)["spec"]["affinity"]),
    ("a", "gateway.initContainer.enabled", True, lambda r: r.pod(GW)["spec"]["initContainers"][0]["name"] == "init-sysctl"),
    ("a", "gateway.initContainer.image.repository", "mirror.example.com/busybox", lambda r: r.pod(GW)["spec"]["initContainers"][0]["image"].startswith("mirror.example.com/busybox:")),
    ("a", "gateway.initContainer.image.tag", "1.37", lambda r: r.pod(GW)["spec"]["initContainers"][0]["image"] == "mirror.example.com/busybox:1.37"),
    ("a", "gateway.initContainer.image.pullPolicy", "Always", lambda r: r.pod(GW)["spec"]["initContainers"][0]["imagePullPolicy"] == "Always"),
    ("a", "gateway.initContainer.securityContext", {"privileged": True}, lambda r: r.pod(GW)["spec"]["initContainers"][0]["securityContext"]["privileged"] is True),
    ("a", "gateway.podAntiAffinity.type", "hard", lambda r: "requiredDuringSchedulingIgnoredDuringExecution" in r.pod(GW)["spec"]["affinity"]["podAntiAffinity"]),
    ("b", "gateway.podAntiAffinity.weight", 42, lambda r: r.pod(GW)["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 42),
    ("a", "gateway.podAntiAffinity.topologyKey", "topology.kubernetes.io/zone", lambda r: r.pod(GW)["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "topology.kubernetes.io/zone"),
    ("a", "gateway.livenessProbe", {"tcpSocket": {"port": 10000}, "periodSeconds": 7},
        lambda r: r.container(GW)["livenessProbe"]["tcpSocket"] == {"port": 10000}
        and "httpGet" not in r.container(GW)["livenessProbe"] and r.container(GW)["livenessProbe"]["periodSeconds"] == 7),
    ("a", "gateway.readinessProbe", {"periodSeconds": 9}, lambda r: r.container(GW)["readinessProbe"]["periodSeconds"] == 9
        and r.container(GW)["readinessProbe"]["httpGet"]["path"] == "/readyz"),
    ("a", "gateway.envoy.admin.address", "0.0.0.0", NO_EFFECT),
    ("a", "gateway.envoy.admin.port", 19901, NO_EFFECT),
    ("a", "gateway.envoy.listener.address", "127.0.0.1", lambda r: any(a.startswith("--listen=127.0.0.1:") for a in r.args(GW))),
    ("a", "gateway.envoy.listener.port", 17788, lambda r: "--listen=127.0.0.1:17788" in r.args(GW)
        and {"containerPort": 17788, "name": "http"} in r.container(GW)["ports"]),
    ("a", "gateway.envoy.logLevel", "critical", lambda r: r.env(GW)["RUST_LOG"] == "error"),
    ("a", "gateway.envoy.concurrency", "2", lambda r: r.env(GW)["TOKIO_WORKER_THREADS"] == "2"),
    ("a", "gateway.envoy.golangFilter.libraryId", "x", NO_EFFECT),
    ("a", "gateway.envoy.golangFilter.libraryPath", "/x.so", NO_EFFECT),
    ("a", "gateway.envoy.golangFilter.pluginName", "x", NO_EFFECT),
    ("a", "gateway.envoy.circuitBreakers.thresholds",
        [{"priority": "HIGH", "max_connections": 1}, {"priority": "DEFAULT", "max_connections": 11,
          "max_pending_requests": 12, "max_requests": 13, "max_retries": 14}],
        lambda r: all(a in r.args(GW) for a in ["--max-connections=11", "--max-pending-requests=12",
                                                 "--max-requests=13", "--max-retries=14"])),
    ("b", "gateway.envoy.circuitBreakers.enabled", False, has_arg("--max-connections=4294967295", GW)),
    ("a", "gateway.envoy.pluginConfig.hostHeaderName", "X-Host", has_arg("--host-header-name=X-Host", GW)),
    ("a", "gateway.envoy.pluginConfig.sandboxHeaderName", "x-sbx", has_arg("--sandbox-header-name=x-sbx", GW)),
    ("a", "gateway.envoy.pluginConfig.sandboxPortHeader", "x-port", has_arg("--sandbox-port-header=x-port", GW)),
    ("a", "gateway.envoy.pluginConfig.defaultPort", "1", has_arg("--default-port=1", GW)),
    ("a", "gateway.service.type", "LoadBalancer", lambda r: r.one("Service", component=GW)["spec"]["type"] == "LoadBalancer"),
    ("a", "gateway.service.port", 18000, lambda r: r.one("Service", component=GW)["spec"]["ports"][0]["port"] == 18000
        and any(p["backend"]["service"]["port"]["number"] == 18000
                for rule in r.one("Ingress")["spec"]["rules"] for p in rule["http"]["paths"])),
    ("a", "gateway.service.targetPort", 17788, lambda r: r.one("Service", component=GW)["spec"]["ports"][0]["targetPort"] == 17788),
    ("a", "gateway.service.annotations", {"lb.example.com/internal": "true"}, lambda r: r.one("Service", component=GW)["metadata"]["annotations"]["lb.example.com/internal"] == "true"),
    ("a", "gateway.service.labels", {"expose": "yes"}, lambda r: r.one("Service", component=GW)["metadata"]["labels"]["expose"] == "yes"),
    ("a", "watchNamespaces", ["team-a", "team-b"], lambda r: all(
        a in r.args(c) for c in (MGR, GW) for a in ["--namespace=team-a", "--namespace=team-b"])),
    ("a", "peerToken", "peer-secret-token", lambda r: any(
        s.get("data", {}).get("peer-token") == "cGVlci1zZWNyZXQtdG9rZW4=" for s in r.all("Secret"))),
    ("b", "fullnameOverride", "paddock-mgr", lambda r: r.deploy(MGR)["metadata"]["name"] == "paddock-mgr"
        and "--key-secret=paddock-mgr-api-keys" in r.args(MGR)),
    ("b", "e2b.enableAuth", False, lambda r: "--enable-auth=false" in r.args(MGR)
        and "PADDOCK_ADMIN_API_KEY" not in r.env(MGR)),
]


def leaves(values, prefix=""):
    """Dotted paths of the leaves of values.yaml: scalars, lists and empty maps."""
    for k, v in values.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from leaves(v, path + ".")
        else:
            yield path


def nested(pairs):
    out = {}
    for key, value in pairs:
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def render(chart, values):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values, f)
    try:
        out = subprocess.run(
            ["helm", "template", "rel", chart, "-n", "paddock-check", "-f", f.name],
            check=True, capture_output=True, text=True,
        ).stdout
    finally:
        os.unlink(f.name)
    return Rendered(list(yaml.safe_load_all(out)))


def main():
    chart = sys.argv[1].rstrip("/")
    table = {"sandbox-controller": CONTROLLER, "sandbox-manager": MANAGER}[os.path.basename(chart)]
    with open(os.path.join(chart, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    passed = failed = 0

    def result(ok, what):
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'ok  ' if ok else 'FAIL'} {what}")

    covered = {key for _, key, _, _ in table}
    for leaf in leaves(defaults):
        # a table entry for the leaf itself or for a map above it
        ok = any(leaf == key or leaf.startswith(key + ".") for key in covered)
        if not ok:
            result(False, f"{leaf}: in values.yaml but not checked (add it to the table)")

    def default_of(key):
        node = defaults
        for part in key.split("."):
            node = node[part]
        return node

    # Group b/c renders start from group a's values less those they change.
    base = [(key, value) for group, key, value, _ in table if group == "a"]
    # an admin key, required by the manager chart unless auth is off
    extra = [("e2b.adminApiKey", "e2b_checked_key")] if table is MANAGER else []
    for group in sorted({g for g, *_ in table}):
        pairs = [(k, v) for g, k, v, _ in table if g == group]
        if group != "a":
            changed = {k for k, _ in pairs}
            # the settings of group a that would hide what group `group` checks
            hide = {"nameOverride", "serviceAccount.create", "gateway.podAntiAffinity.type",
                    "gateway.imagePullSecrets", "gateway.serviceAccount.name"}
            pairs = [(k, v) for k, v in base + extra if k not in changed and k not in hide] + pairs
        else:
            pairs = pairs + [p for p in extra if p[0] not in {k for k, _ in pairs}]
        try:
            rendered = render(chart, nested(pairs))
        except subprocess.CalledProcessError as e:
            result(False, f"group {group}: helm template failed: {e.stderr.strip()}")
            continue
        for g, key, value, check in table:
            if g != group:
                continue
            if value == default_of(key):
                result(False, f"{key}: table value {value!r} is the default")
                continue
            if check == NO_EFFECT:
                result(True, f"{key}={value!r} accepted (documented: no effect)")
                continue
            try:
                ok = bool(check(rendered))
                why = ""
            except (AssertionError, KeyError, IndexError, TypeError) as e:
                ok, why = False, f" ({type(e).__name__}: {e})"
            result(ok, f"{key}={value!r} reached the manifests{why}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
