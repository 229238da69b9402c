"""Which RBAC permission an HTTP request to the API needs, and which ones a ClusterRole grants.

``required(request)`` follows the API server's own request classification
(k8s.io/apiserver ``RequestInfoFactory``): the URL path gives the API group, the
resource (plural, ``/subresource`` appended) and whether an object is named; the method
and ``?watch=`` give the verb. Paths outside ``/api/v1/...`` and ``/apis/G/V/...`` with
a resource (``/api``, ``/apis/G``, ``/version``) are non-resource URLs, which RBAC
matches by path instead.

It works on kmock's request log (``.method``, ``.url``, ``.params``) and needs no kmock
parsing, so a kmock quirk cannot hide a verb.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

# What the default ClusterRoles system:discovery and system:public-info-viewer let every
# authenticated client read: nothing to grant for these.
DISCOVERY_PATHS = ("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz",
                   "/version", "/version/", "/openapi", "/openapi/*")


@dataclasses.dataclass(frozen=True, order=True)
class Permission:
    """One (API group, resource, verb) triple, as RBAC rules grant them."""

    api_group: str  # "" for the core group
    resource: str  # plural, with "/subresource" when there is one
    verb: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f".{self.api_group}" if self.api_group else "")


@dataclasses.dataclass(frozen=True, order=True)
class NonResource:
    """A request to a non-resource URL (discovery, /version ...)."""

    path: str
    verb: str


class Request(Protocol):
    """The part of a logged request this module reads (kmock's Request has it)."""

    @property
    def method(self) -> Any: ...  # a str or a str-valued enum

    @property
    def url(self) -> Any: ...  # has .path

    @property
    def params(self) -> Mapping[str, str]: ...


def _method(request: Request) -> str:
    method = request.method
    return str(getattr(method, "value", method)).upper()


def required(request: Request) -> Permission | NonResource:
    """The permission ``request`` needs."""
    method = _method(request)
    parts = [p for p in str(request.url.path).split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return NonResource("/" + "/".join(parts), method.lower())
    if len(rest) > 2 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        # /namespaces/NS/RESOURCE[/NAME[/SUB]]; /namespaces/NS[/status] is the Namespace itself.
        rest = rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{'/'.join(rest[2:])}"

    watching = request.params.get("watch", "").lower() in ("true", "1")
    if method in ("GET", "HEAD"):
        verb = "watch" if watching else "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    return Permission(group, resource, verb)


def granted(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Every permission the resource rules of a (Cluster)Role grant.

    Wildcards and resourceNames are refused (ValueError): the caller compares exact sets,
    and flock's role must never need either.
    """
    permissions = set()
    for rule in rules:
        if "nonResourceURLs" in rule:
            raise ValueError(f"unexpected nonResourceURLs rule: {rule}")
        if rule.get("resourceNames"):
            raise ValueError(f"unexpected resourceNames in rule: {rule}")
        for field in ("apiGroups", "resources", "verbs"):
            if "*" in rule.get(field, []):
                raise ValueError(f"wildcard in {field}: {rule}")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    permissions.add(Permission(group, resource, verb))
    return permissions


def is_discovery(item: NonResource) -> bool:
    """A GET that the default discovery roles already allow to every authenticated client."""
    if item.verb != "get":
        return False
    return any(item.path == pattern or (pattern.endswith("/*") and item.path.startswith(pattern[:-1]))
               for pattern in DISCOVERY_PATHS)
