"""The Dockerfile, read as Docker would: pinned base, hashed dependencies, uid 65532, the official
entrypoints and default command, a curl-free health check, and a build context that holds every
file the build copies. (No container engine runs here; the image's scripts run for real in
test_deploy_entrypoints.py and test_deploy_hardened_proxy.py.)"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def final(name: str) -> str:
    found = [args for ins, args in stages()[-1] if ins == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def arg_default(name: str) -> str:
    for ins, args in instructions():
        if ins == "ARG" and args.startswith(name + "="):
            return args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}")


def test_base_image_is_pinned_by_digest() -> None:
    base = arg_default("PYTHON_IMAGE")
    assert base.startswith("python:3.11-slim@")
    assert DIGEST.search(base)
    for ins, args in instructions():
        if ins == "FROM":
            image = args.split()[0]
            assert image == "${PYTHON_IMAGE}" or DIGEST.search(image), args


def test_runtime_user_entrypoint_and_default_command() -> None:
    assert len(stages()) == 2  # build tools stay in the build stage
    assert final("USER") == "65532:65532"
    assert json.loads(final("ENTRYPOINT")) == ["/usr/local/bin/mcp-tunnel-entrypoint"]
    assert json.loads(final("CMD")) == ["-config", "/etc/mcp-gateway/config.yaml"]
    assert final("STOPSIGNAL") == "SIGTERM"


def test_healthcheck_uses_python_not_curl() -> None:
    hc = final("HEALTHCHECK")
    options, _, cmd = hc.partition("CMD ")
    command = json.loads(cmd)
    assert command == ["/opt/mcp-tunnel/bin/python", "-I", "/usr/local/lib/mcp-tunnel/healthcheck.py"]
    assert "--interval=" in options and "--timeout=" in options
    text = DOCKERFILE.read_text()
    for tool in ("curl", "wget"):
        assert not re.search(rf"apt-get[^\n]*install[^\n]*\b{tool}\b", text), tool


def test_compose_health_checks_call_the_same_script() -> None:
    import yaml

    command = json.loads(final("HEALTHCHECK").partition("CMD ")[2])
    for flow in ("manual", "programmatic"):
        doc = yaml.safe_load((REPO / "deploy" / "compose" / flow / "docker-compose.yaml").read_text())
        assert doc["services"]["mcp-proxy"]["healthcheck"]["test"] == ["CMD", *command]


def test_dependencies_install_from_hashes_and_wheels_only() -> None:
    runs = [args for ins, args in instructions() if ins == "RUN" and "pip install" in args]
    assert runs
    for run in runs:
        for cmd in re.split(r"&&", run):
            if "pip install" in cmd and "-r " in cmd:
                assert "--require-hashes" in cmd and "--only-binary=:all:" in cmd and "--no-deps" in cmd, cmd
            elif "pip install" in cmd:
                assert "--no-index" in cmd and "--no-deps" in cmd, cmd  # the project's own wheel
    assert "--no-build-isolation" in DOCKERFILE.read_text()  # the backend comes from the hashed lock


def test_files_the_image_adds() -> None:
    text = DOCKERFILE.read_text()
    assert "install -D -m 0755 /tmp/docker/setup /rootfs/setup" in text
    assert "install -D -m 0755 /tmp/docker/entrypoint.sh /rootfs/usr/local/bin/mcp-tunnel-entrypoint" in text
    assert "/rootfs/usr/local/lib/mcp-tunnel/healthcheck.py" in text
    assert "-o 65532 -g 65532 /rootfs/data" in text  # a fresh named volume at /data is writable by setup
    assert "useradd --system --uid 65532 --gid 65532" in text


# --- build context ---------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((negate, re.compile(rx + "$")))
    return out


def in_context(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches too."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, rx in dockerignore_patterns():
        if any(rx.match(c) for c in candidates):
            included = negate
    return included


def copied_sources() -> list[str]:
    sources = []
    for ins, args in instructions():
        if ins == "COPY" and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def test_every_copied_file_is_in_the_build_context() -> None:
    sources = copied_sources()
    assert "docker/requirements.image.txt" in sources and "src" in sources
    for src in sources:
        if "*" in src:
            continue  # optional (README.md* while the README may not exist yet)
        path = REPO / src
        assert path.exists(), src
        files = [p for p in path.rglob("*.py")] if path.is_dir() else [path]
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" in rel:
                assert not in_context(rel), rel
                continue
            assert in_context(rel), f"{rel} is excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    for rel in (
        ".venv/bin/python",
        ".git/config",
        "deploy/compose/manual/data/tls.key",
        "tests/x.py",
        ".env",
        "src/mcp_tunnel/__pycache__/cli.cpython-311.pyc",
    ):
        assert not in_context(rel), rel
    assert in_context("src/mcp_tunnel/cli.py")
    assert in_context("pyproject.toml")


# --- pinned, hashed dependencies --------------------------------------------------------------------


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from a pip-compile --generate-hashes file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, rest = line.partition("==")
        version = rest.split()[0]
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", rest)
        out[canonicalize_name(name)] = (version, hashes)
    return out


def project_lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def runtime_closure() -> dict[str, str]:
    """The installed distributions the project's runtime dependencies pull in (no extras)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    seen: dict[str, str] = {}
    stack = [Requirement(d).name for d in deps]
    while stack:
        name = canonicalize_name(stack.pop())
        if name in seen:
            continue
        dist = md.distribution(name)
        seen[name] = dist.version
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen


def test_image_lock_is_fully_hashed_and_matches_the_project_lock() -> None:
    lock = parse_lock(REPO / "docker" / "requirements.image.txt")
    pins = project_lock()
    assert lock
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name} has no hash"
        assert pins.get(name) == version, (
            f"{name}=={version} differs from requirements.lock ({pins.get(name)})"
        )


def test_image_lock_covers_the_runtime_dependencies() -> None:
    """Fails when pyproject's dependencies change without ./docker/relock."""
    try:
        closure = runtime_closure()
    except md.PackageNotFoundError as exc:
        pytest.skip(f"the project's dependencies are not installed here: {exc}")
    lock = parse_lock(REPO / "docker" / "requirements.image.txt")
    assert {n: v for n, (v, _) in lock.items()} == closure
    direct = [
        Requirement(line)
        for line in (REPO / "docker" / "requirements.image.in").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(canonicalize_name(r.name) for r in direct) == sorted(
        canonicalize_name(Requirement(d).name) for d in deps
    )


def test_build_lock_satisfies_the_build_backend() -> None:
    lock = parse_lock(REPO / "docker" / "requirements.build.txt")
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    for req in map(Requirement, build["requires"]):
        version, hashes = lock[canonicalize_name(req.name)]
        assert hashes and SpecifierSet(str(req.specifier)).contains(version), req


def test_console_scripts_the_image_uses() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mcp-tunnel"] == "mcp_tunnel.cli:main"
