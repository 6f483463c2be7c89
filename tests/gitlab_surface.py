"""GITLAB.md §1, copied as data: every endpoint a job token may call in GitLab 18.4, with the
job token policies GitLab's route declares. `tests/test_routes.py` checks the route table
against it, `tests/test_decision_families.py` decides every row with and without them.

A path's `:id` is project 5 here; `None` as policies: the row is not policy-checked (trigger,
git) or, for the registry API, "none possible" in GitLab (jobgate keeps the deprecated
`read_/admin_containers` there, see docs/design.md).
"""

from __future__ import annotations

P = "/api/v4/projects/5"
RD, AD = ("read_deployments",), ("admin_deployments",)
RE, AE = ("read_environments",), ("admin_environments",)
RJ, RMR, RPL, APL = ("read_jobs",), ("read_merge_requests",), ("read_pipelines",), ("admin_pipelines",)
RP, AP = ("read_packages",), ("admin_packages",)
RR, AR = ("read_releases",), ("admin_releases",)
RREPO, RSF, ASF = ("read_repositories",), ("read_secure_files",), ("admin_secure_files",)
RTF, ATF, RWI = ("read_terraform_state",), ("admin_terraform_state",), ("read_work_items",)

#: (family, method, path, policies the route needs)
SURFACE: list[tuple[str, str, str, tuple[str, ...] | None]] = [
    ("deployments", "GET", P + "/deployments", RD),
    ("deployments", "GET", P + "/deployments/3", RD),
    ("deployments", "GET", P + "/deployments/3/merge_requests", RD),
    ("deployments", "PUT", P + "/deployments/3", AD),
    ("deployments", "DELETE", P + "/deployments/3", AD),
    ("deployments", "POST", P + "/deployments/3/approval", AD),
    ("deployments", "POST", P + "/deployments", ("admin_deployments", "admin_environments")),
    ("environments", "GET", P + "/environments", RE),
    ("environments", "GET", P + "/environments/3", RE),
    ("environments", "POST", P + "/environments", AE),
    ("environments", "PUT", P + "/environments/3", AE),
    ("environments", "DELETE", P + "/environments/3", AE),
    ("environments", "DELETE", P + "/environments/review_apps", AE),
    ("environments", "POST", P + "/environments/3/stop", AE),
    ("environments", "POST", P + "/environments/stop_stale", AE),
    ("jobs", "GET", P + "/jobs/77/artifacts", RJ),
    ("jobs", "GET", P + "/jobs/77/artifacts/dist/app.tar", RJ),
    ("jobs", "GET", P + "/jobs/artifacts/main/download", RJ),
    ("jobs", "GET", P + "/jobs/artifacts/main/raw/out/a.txt", RJ),
    ("jobs", "GET", "/api/v4/jobs/77/artifacts", RJ),
    ("jobs", "GET", P + "/jobs", RJ),
    ("jobs", "GET", P + "/pipelines/9/jobs", RJ),
    ("merge_requests", "GET", P + "/merge_requests", RMR),
    ("merge_requests", "GET", P + "/merge_requests/4", RMR),
    ("merge_requests", "GET", P + "/merge_requests/4/notes", RMR),
    ("merge_requests", "GET", P + "/merge_requests/4/notes/8", RMR),
    ("packages", "GET", P + "/packages/generic/tool/1.0/tool.bin", RP),
    ("packages", "GET", P + "/packages/maven/com/example/app/1.0/app-1.0.jar", RP),
    ("packages", "GET", P + "/packages/npm/@scope%2Fpkg", RP),
    ("packages", "GET", P + "/packages/npm/@scope/pkg/-/pkg-1.0.tgz", RP),
    ("packages", "GET", P + "/packages/npm/-/package/@scope%2Fpkg/dist-tags", RP),
    ("packages", "POST", P + "/packages/npm/-/npm/v1/security/advisories/bulk", RP),
    ("packages", "POST", P + "/packages/npm/-/npm/v1/security/audits/quick", RP),
    ("packages", "GET", P + "/packages/pypi/simple/pkg", RP),
    ("packages", "GET", P + "/packages/pypi/files/abc123/pkg-1.0.whl", RP),
    ("packages", "GET", P + "/packages/go/example.com/mod/@v/list", RP),
    ("packages", "GET", P + "/packages/composer/archives/pkg.zip", RP),
    ("packages", "GET", P + "/packages/conan/v1/conans/pkg/1.0/user/stable/digest", RP),
    ("packages", "POST", P + "/packages/conan/v1/conans/pkg/1.0/user/stable/upload_urls", RP),
    ("packages", "POST", P + "/packages/conan/v1/conans/pkg/1.0/user/stable/packages/ref1/upload_urls", RP),
    ("packages", "GET", P + "/packages/nuget/index.json", RP),
    ("packages", "GET", P + "/packages/helm/stable/index.yaml", RP),
    ("packages", "GET", P + "/packages/rubygems/specs.4.8.gz", RP),
    ("packages", "GET", P + "/packages/terraform/modules/v1/grp/mod/aws/versions", RP),
    ("packages", "GET", P + "/packages", RP),
    ("packages", "GET", P + "/packages/3", RP),
    ("packages", "GET", P + "/packages/3/package_files", RP),
    ("packages", "PUT", P + "/packages/generic/tool/1.0/tool.bin", AP),
    ("packages", "PUT", P + "/packages/generic/tool/1.0/tool.bin/authorize", AP),
    ("packages", "PUT", P + "/packages/maven/com/example/app/1.0/app-1.0.jar", AP),
    ("packages", "PUT", P + "/packages/maven/com/example/app/1.0/app-1.0.jar/authorize", AP),
    ("packages", "PUT", P + "/packages/conan/v1/files/pkg/1.0/user/stable/0/export/conanfile.py", AP),
    (
        "packages",
        "PUT",
        P + "/packages/conan/v1/files/pkg/1.0/user/stable/0/export/conanfile.py/authorize",
        AP,
    ),
    ("packages", "POST", P + "/packages/pypi", AP),
    ("packages", "POST", P + "/packages/composer", AP),
    ("packages", "PUT", P + "/packages/npm/@scope%2Fpkg", AP),
    ("packages", "PUT", P + "/packages/npm/-/package/@scope%2Fpkg/dist-tags/latest", AP),
    ("packages", "DELETE", P + "/packages/npm/-/package/@scope%2Fpkg/dist-tags/latest", AP),
    ("packages", "DELETE", P + "/packages/3", AP),
    ("packages", "DELETE", P + "/packages/3/package_files/4", AP),
    ("pipelines", "GET", P + "/pipelines", RPL),
    ("pipelines", "GET", P + "/pipelines/9", RPL),
    ("pipelines", "GET", P + "/pipelines/9/bridges", RPL),
    ("pipelines", "GET", P + "/packages/3/pipelines", RPL),
    ("pipelines", "PUT", P + "/pipelines/9/metadata", APL),
    ("trigger", "POST", P + "/trigger/pipeline", None),
    ("trigger", "POST", P + "/ref/main/trigger/pipeline", None),
    ("releases", "GET", P + "/releases", RR),
    ("releases", "GET", P + "/releases/v1.0", RR),
    ("releases", "GET", P + "/releases/v1.0/assets/links", RR),
    ("releases", "GET", P + "/releases/v1.0/assets/links/3", RR),
    ("releases", "GET", P + "/releases/v1.0/downloads/bin/app", RR),
    ("releases", "GET", P + "/releases/permalink/latest", RR),
    ("releases", "GET", P + "/releases/permalink/latest/downloads/bin/app", RR),
    ("releases", "GET", P + "/repository/changelog", RR),
    ("releases", "POST", P + "/releases", AR),
    ("releases", "PUT", P + "/releases/v1.0", AR),
    ("releases", "DELETE", P + "/releases/v1.0", AR),
    ("releases", "POST", P + "/releases/v1.0/evidence", AR),
    ("releases", "POST", P + "/releases/v1.0/assets/links", AR),
    ("releases", "PUT", P + "/releases/v1.0/assets/links/3", AR),
    ("releases", "DELETE", P + "/releases/v1.0/assets/links/3", AR),
    ("releases", "POST", P + "/catalog/publish", AR),
    ("repository", "GET", P + "/repository/branches", RREPO),
    ("repository", "GET", P + "/repository/tags", RREPO),
    ("repository", "GET", P + "/repository/commits/abc123", RREPO),
    ("repository", "GET", P + "/repository/commits/abc123/merge_requests", RREPO),
    ("repository", "GET", P + "/repository/files/src%2Fmain.c/raw", RREPO),
    ("secure_files", "GET", P + "/secure_files", RSF),
    ("secure_files", "GET", P + "/secure_files/3", RSF),
    ("secure_files", "GET", P + "/secure_files/3/download", RSF),
    ("secure_files", "POST", P + "/secure_files", ASF),
    ("secure_files", "DELETE", P + "/secure_files/3", ASF),
    ("terraform_state", "GET", P + "/terraform/state/prod", RTF),
    ("terraform_state", "GET", P + "/terraform/state/prod/versions/3", RTF),
    ("terraform_state", "POST", P + "/terraform/state/prod", ATF),
    ("terraform_state", "DELETE", P + "/terraform/state/prod", ATF),
    ("terraform_state", "DELETE", P + "/terraform/state/prod/versions/3", ATF),
    ("terraform_state", "POST", P + "/terraform/state/prod/lock", ATF),
    ("terraform_state", "DELETE", P + "/terraform/state/prod/lock", ATF),
    ("issues", "GET", P + "/issues", RWI),
    ("issues", "GET", P + "/issues/4", RWI),
    ("container_registry", "GET", P + "/registry/repositories", None),
    ("container_registry", "DELETE", P + "/registry/repositories/2", None),
    ("git", "GET", "/group/app.git/info/refs?service=git-upload-pack", None),
    ("git", "POST", "/group/app.git/git-upload-pack", None),
    ("git", "GET", "/group/app.git/info/refs?service=git-receive-pack", None),
    ("git", "POST", "/group/app.git/git-receive-pack", None),
]

#: Paths that name no project (GitLab finds it in its package database): 404 in jobgate.
UNROUTED = [
    ("GET", "/api/v4/groups/3/-/packages/maven/com/example/app/1.0/app-1.0.jar"),
    ("GET", "/api/v4/groups/3/-/packages/npm/@scope%2Fpkg"),
    ("GET", "/api/v4/groups/3/-/packages/pypi/simple/pkg"),
    ("GET", "/api/v4/packages/maven/com/example/app/1.0/app-1.0.jar"),
    ("GET", "/api/v4/packages/npm/@scope%2Fpkg"),
    ("GET", "/api/v4/packages/conan/v1/conans/pkg/1.0/user/stable"),
    ("GET", "/api/v4/groups/3/-/packages/composer/packages"),
]

#: The upstream each family goes to (falls back to `api` for the GitLab 18.4 families).
FAMILY_UPSTREAM = {
    "deployments": "deployments", "environments": "environments", "jobs": "artifacts",
    "merge_requests": "merge_requests", "packages": "packages", "pipelines": "pipelines",
    "trigger": "triggers", "releases": "releases", "repository": "repository",
    "secure_files": "secure_files", "terraform_state": "terraform", "issues": "issues",
    "container_registry": "api", "git": "git",
}  # fmt: skip


def row_id(family: str, method: str, path: str) -> str:
    """A readable test id for one row."""
    return f"{family}:{method} {path.removeprefix(P).removeprefix('/api/v4') or '/'}"
