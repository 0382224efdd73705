"""The chart's RBAC: enough for the operator (every other test runs it as the chart's ServiceAccount)
and nothing more, asked of the real authorizer through SubjectAccessReviews."""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest
from kubernetes import client, config

from .conftest import OperatorProcess, Release

# The authorizer's wording: `<resource> is forbidden: User "<user>" cannot <verb> resource ...`
RBAC_DENIAL = re.compile(r"forbidden: User \S+ cannot [^\n]*")
NS = "team-a"  # a namespace that need not exist: authorization does not look


class Access(NamedTuple):
    verb: str
    group: str
    resource: str
    namespace: str | None = NS
    subresource: str | None = None

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        where = f" in {self.namespace}" if self.namespace else " (cluster)"
        return f"{self.verb} {self.resource}{sub}.{self.group or 'core'}{where}"


def _all(verbs: str, group: str, resource: str, namespace: str | None = NS) -> list[Access]:
    return [Access(v, group, resource, namespace) for v in verbs.split()]


CHILD_VERBS = "get list watch create patch delete"  # server-side apply is a PATCH
ALLOWED = [
    *_all("get list watch patch", "slm.dev", "slmdeployments"),
    *_all("get list watch", "slm.dev", "slmdeployments", None),  # cluster-wide watch
    Access("patch", "slm.dev", "slmdeployments", subresource="status"),
    # blockOwnerDeletion on the children's ownerReferences, where OwnerReferencesPermissionEnforcement is on
    Access("update", "slm.dev", "slmdeployments", subresource="finalizers"),
    *_all(CHILD_VERBS, "apps", "deployments"),
    *_all(CHILD_VERBS, "", "services"),
    *_all(CHILD_VERBS, "", "configmaps"),
    *_all(CHILD_VERBS, "", "serviceaccounts"),
    *_all(CHILD_VERBS, "", "persistentvolumeclaims"),
    *_all(CHILD_VERBS, "policy", "poddisruptionbudgets"),
    *_all(CHILD_VERBS, "autoscaling", "horizontalpodautoscalers"),
    *_all(CHILD_VERBS, "networking.k8s.io", "networkpolicies"),
    *_all("list watch", "", "pods", None),
    *_all("create patch", "", "events"),
    *_all("create patch", "events.k8s.io", "events"),
    *_all("get list watch", "", "nodes", None),
    *_all("list watch", "apiextensions.k8s.io", "customresourcedefinitions", None),
    *_all("list watch", "", "namespaces", None),
]
DENIED = [
    # Secrets: none cluster-wide (`get` would read every Secret's data; issue 13). Namespaced mode's
    # Roles grant `get` in the watched namespaces only (tests/e2e/namespaced).
    *_all("get list watch create update patch delete", "", "secrets"),
    *_all("get list watch", "", "secrets", None),
    # Children and status are written by server-side apply / patch, never replaced whole.
    *(Access("update", g, r) for g, r in [("apps", "deployments"), ("", "services"), ("", "configmaps")]),
    Access("update", "slm.dev", "slmdeployments", subresource="status"),
    # Pods are the Deployment controller's business; no exec, attach, logs or eviction.
    *_all("get create update patch delete deletecollection", "", "pods"),
    Access("create", "", "pods", subresource="exec"),
    Access("create", "", "pods", subresource="attach"),
    Access("get", "", "pods", subresource="log"),
    Access("create", "", "pods", subresource="eviction"),
    Access("create", "", "serviceaccounts", subresource="token"),
    # Its own custom resource: users create and delete SLMDeployments, the operator never does.
    *_all("create update delete deletecollection", "slm.dev", "slmdeployments"),
    # No privilege escalation paths.
    *_all("create update patch delete escalate bind", "rbac.authorization.k8s.io", "clusterroles", None),
    *_all("create update patch delete", "rbac.authorization.k8s.io", "clusterrolebindings", None),
    *_all("create update patch delete escalate bind", "rbac.authorization.k8s.io", "roles"),
    *_all("create update patch", "rbac.authorization.k8s.io", "rolebindings"),
    Access("impersonate", "", "users", None),
    Access("impersonate", "", "serviceaccounts"),
    *_all(
        "create update patch delete", "admissionregistration.k8s.io", "validatingwebhookconfigurations", None
    ),
    *_all(
        "create update patch delete", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", None
    ),
    Access("create", "certificates.k8s.io", "certificatesigningrequests", None),
    # Cluster objects: read nodes only; never install or change CRDs or namespaces.
    *_all("create update patch delete", "", "nodes", None),
    Access("patch", "", "nodes", None, "status"),
    *_all("get create update patch delete", "apiextensions.k8s.io", "customresourcedefinitions", None),
    *_all("create update patch delete", "", "namespaces", None),
    *_all("create update patch delete", "", "persistentvolumes", None),
    # Workloads it does not manage.
    *_all("create patch delete", "apps", "daemonsets"),
    *_all("create patch delete", "apps", "statefulsets"),
    *_all("create patch delete", "apps", "replicasets"),
    *_all("create patch delete", "batch", "jobs"),
    # Wildcards.
    Access("*", "*", "*", None),
    Access("*", "", "secrets"),
]


def _allowed(api: client.ApiClient, release: Release, access: Access) -> tuple[bool, str]:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=release.user,
            # what the authenticator gives a ServiceAccount token: group grants count too
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{release.namespace}",
                "system:authenticated",
            ],
            resource_attributes=client.V1ResourceAttributes(
                verb=access.verb,
                group=access.group,
                resource=access.resource,
                subresource=access.subresource,
                namespace=access.namespace,
            ),
        )
    )
    status = client.AuthorizationV1Api(api).create_subject_access_review(review).status
    return bool(status.allowed), str(status.reason or status.evaluation_error or "")


@pytest.mark.parametrize("access", ALLOWED, ids=str)
def test_service_account_is_allowed(
    kube_api: client.ApiClient, operator_release: Release, access: Access
) -> None:
    allowed, reason = _allowed(kube_api, operator_release, access)
    assert allowed, f"{operator_release.user} may not {access}: {reason}"


@pytest.mark.parametrize("access", DENIED, ids=str)
def test_service_account_is_denied(
    kube_api: client.ApiClient, operator_release: Release, access: Access
) -> None:
    allowed, reason = _allowed(kube_api, operator_release, access)
    assert not allowed, f"{operator_release.user} may {access}: {reason}"


def test_operator_authenticates_as_the_chart_service_account(
    operator: OperatorProcess, operator_release: Release
) -> None:
    """The running operator's credentials are the ServiceAccount's (not the admin's), and the API
    server enforces the chart's rules on them."""
    api = config.new_client_from_config(config_file=str(operator.kubeconfig))
    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview(metadata=client.V1ObjectMeta())
        )
        assert review.status.user_info.username == operator_release.user
        with pytest.raises(client.ApiException) as denied:
            client.CoreV1Api(api).list_secret_for_all_namespaces()
        assert denied.value.status == 403
        client.CoreV1Api(api).list_node()  # allowed
    finally:
        api.close()


def test_operator_log_has_no_authorization_errors(operator: OperatorProcess) -> None:
    """Runs after the other modules (file order): nothing the operator did so far was denied by
    RBAC. (A 403 for a namespace being terminated is admission, not authorization.)"""
    denials = RBAC_DENIAL.findall(operator.log.read_text(errors="replace"))
    assert denials == []
