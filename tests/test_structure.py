"""The shape of the package: the seam between the controller and each etcd API holds,
and every module stays short enough to read in one sitting."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "etcdmirror"

#: Modules that speak only in roles, and the API modules they must not import.
ROLE_USERS = ("controller", "checkpoint", "resync", "guards", "roles", "events", "retry",
              "gate", "pipeline", "failures")
V2_MODULES = {"client", "answers", "transport", "bodies", "watches", "watcher", "stream",
              "applier", "indexstore", "v2source", "v2replica", "ttlkeeper"}
V3_MODULES = {"v3wire", "v3client", "v3mapping", "v3replica", "v3indexstore", "v3source",
              "sides"}


#: "None longer than about 450 lines" (issue 12).
MAX_LINES = 450


def test_role_users_import_no_etcd_api_module():
    for name in ROLE_USERS:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("etcdmirror."):
                imported.add(node.module.split(".", 1)[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "etcdmirror":
                imported.update(alias.name for alias in node.names)
        assert not imported & (V2_MODULES | V3_MODULES), (name, imported & (V2_MODULES | V3_MODULES))


def test_every_module_is_short():
    long = {str(path.relative_to(ROOT)): n for path in
            sorted(PACKAGE.glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
