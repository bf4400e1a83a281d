"""Static checks of distributed mode: docker-compose.yml, the Dockerfile, the files they reference
and connect/register.sh. No Docker engine is involved; every expectation is computed from the files,
the Settings class and the real CLI, so a broken file fails here."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from crmsync.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
CONNECTOR_FILE = ROOT / "connect" / "crmsync-postgres.json"
REGISTER_SCRIPT = ROOT / "connect" / "register.sh"

CRMSYNC_IMAGE = "crmsync"
EXPECTED_SERVICES = {
    "postgres",
    "kafka",
    "kafka-init",
    "migrate",
    "connect",
    "connect-register",
    "streams",
    "adapter-crm",
    "emulator-hubspot",
}
CAPTURED_TABLES = {
    "public.customers",
    "staging.crm_contacts",
    "staging.billing_customers",
    "staging.support_users",
}
WAIT_CONDITIONS = {"service_healthy", "service_completed_successfully"}
ENV_NAME = re.compile(r"\$\{?(CRMSYNC_[A-Z0-9_]+)")
ENV_PAIR = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*=\s*(.*?)\s*$", re.MULTILINE)
ENV_FILE_NAME = re.compile(r"^\s*#?\s*(CRMSYNC_[A-Z0-9_]+)\s*=", re.MULTILINE)
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")
VERSION = re.compile(r"\d+(?:\.\d+)*")
# Images whose releases are numbered MAJOR.MINOR (PostgreSQL since 10): two parts are exact.
TWO_PART_VERSIONS = {"postgres"}
# Services whose health probe connects to the metrics port their process serves.
METRICS_PORT_SETTING = {
    "streams": "streams_metrics_port",
    "adapter-crm": "adapter_metrics_port",
    "adapter-billing": "billing_adapter_metrics_port",
    "adapter-support": "support_adapter_metrics_port",
}


# --- reading the files -------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    assert isinstance(document.get("services"), dict), "docker-compose.yml has no services"
    return document


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def interpolate(value: object) -> str:
    """The value as Compose would see it with no variables set (defaults applied)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(word) for word in cmd]


def image_name_and_tag(image: str) -> tuple[str, str | None]:
    image = image.split("@", 1)[0]
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:
        return image, None
    return name, tag


def is_crmsync(service: dict[str, Any]) -> bool:
    return image_name_and_tag(str(service.get("image", "")))[0] == CRMSYNC_IMAGE


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short syntax: no condition
        return dict.fromkeys(deps)
    return deps


def env_file_paths(service: dict[str, Any]) -> list[str]:
    files = service.get("env_file") or []
    files = [files] if isinstance(files, str | dict) else files
    return [entry["path"] if isinstance(entry, dict) else entry for entry in files]


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(host source, container target) of each bind mount; named volumes are skipped."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"], volume["target"]
            continue
        source, _, rest = volume.partition(":")
        if source.startswith((".", "/", "~")):
            yield source, rest.split(":", 1)[0]


def secret_targets(service: dict[str, Any]) -> dict[str, str]:
    """Container path of each secret the service mounts, keyed by secret name."""
    targets = {}
    for secret in service.get("secrets") or []:
        source = secret if isinstance(secret, str) else secret["source"]
        target = source if isinstance(secret, str) else secret.get("target", source)
        targets[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return targets


def postgres_service() -> dict[str, Any]:
    return services()["postgres"]


def settings_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def env_examples() -> list[Path]:
    """The committed example of every env_file the crmsync services read."""
    paths = {p for svc in services().values() for p in env_file_paths(svc)}
    return [ROOT / f"{p}.example" for p in sorted(paths)]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def git_ignores(path: str) -> bool:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git work tree: cannot check what git ignores")
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", path], check=False
    )
    return result.returncode == 0


def cli_root() -> Any:
    """The real crmsync CLI as a command tree (click-style: .commands, .params)."""
    try:
        from crmsync.cli import app
    except ImportError as exc:  # checked against the real CLI, never a stand-in
        pytest.fail(f"cannot import the crmsync CLI (crmsync.cli.app): {exc}")
    import typer

    return typer.main.get_command(app)


def cli_problem(words: list[str]) -> str | None:
    """Why `crmsync ARGS...` is not a command line of the real CLI, or None if it is."""
    cmd, rest, path = cli_root(), words[1:], ["crmsync"]
    if rest[:1] == ["emulator"]:
        return emulator_problem(rest[1:])
    while getattr(cmd, "commands", None) is not None:
        if not rest or rest[0] not in cmd.commands:
            return f"{' '.join(path)} has no sub-command {rest[:1]}; it has {sorted(cmd.commands)}"
        cmd = cmd.commands[rest[0]]
        path.append(rest.pop(0))
    options = {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [w for w in rest if w.startswith("-") and w.split("=", 1)[0] not in options]
    if unknown:
        return f"{' '.join(path)} has no option {unknown}; it has {sorted(options)}"
    return None


def emulator_problem(words: list[str]) -> str | None:
    """`crmsync emulator VENDOR ARGS...` hands ARGS to the vendor emulator's own parser."""
    from crmsync.cli import EMULATORS

    if not words or words[0] not in EMULATORS:
        return f"crmsync emulator has no vendor {words[:1]}; it has {list(EMULATORS)}"
    usage = subprocess.run(
        [sys.executable, "-m", f"emulators.{words[0]}", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    unknown = [w for w in words[1:] if w.startswith("-") and w.split("=", 1)[0] not in usage]
    if unknown:
        return f"crmsync emulator {words[0]} has no option {unknown}"
    return None


def connector() -> dict[str, Any]:
    return json.loads(CONNECTOR_FILE.read_text(encoding="utf-8"))


# --- the compose file ----------------------------------------------------------------------------


def test_compose_defines_every_service() -> None:
    missing = EXPECTED_SERVICES - set(services())
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_every_image_is_pinned_to_an_exact_version() -> None:
    refs = {f"service {name}": svc.get("image") for name, svc in services().items()}
    refs |= {
        f"Dockerfile FROM {arg}": arg.split()[0]
        for op, arg in dockerfile_instructions()
        if op == "FROM"
    }
    problems = []
    for where, image in refs.items():
        if not image:
            problems.append(f"{where}: no image")
            continue
        if not is_pinned(str(image)):
            problems.append(f"{where}: {image!r} is not pinned to an exact version")
    assert not problems, "\n".join(problems)


def is_pinned(image: str) -> bool:
    """Tagged with a full release number (3.11.17, 4.3.1, 3.6.3.Final, 15.19), not a moving tag
    such as latest, 3.11 or 15."""
    if "$" in image:
        return False
    name, tag = image_name_and_tag(image)
    version = VERSION.match(tag or "")
    parts_needed = 2 if name.rsplit("/", 1)[-1] in TWO_PART_VERSIONS else 3
    return bool(version) and version.group().count(".") + 1 >= parts_needed


def test_image_pin_rule() -> None:
    pinned = ["postgres:15.19", "apache/kafka:4.3.1", "quay.io/debezium/connect:3.6.3.Final"]
    moving = ["postgres:15", "python:3.11-slim-bookworm", "curlimages/curl:latest", "crmsync"]
    assert all(map(is_pinned, pinned)) and not any(map(is_pinned, moving))


def test_crmsync_image_is_built_here_and_tagged_with_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    crmsync = {name: svc for name, svc in services().items() if is_crmsync(svc)}
    assert crmsync, "no service runs the crmsync image"
    for name, svc in crmsync.items():
        assert svc["image"] == f"{CRMSYNC_IMAGE}:{version}", name
        build = svc.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context and (ROOT / context / "Dockerfile").is_file(), f"{name}: no build context"


def test_crmsync_variables_are_settings_fields() -> None:
    known = settings_env_names()
    used: dict[str, set[str]] = {}
    for name, svc in services().items():
        for key in environment(svc):
            if key.startswith(ENV_PREFIX):
                used.setdefault(key, set()).add(f"service {name}")
    sources = [COMPOSE_FILE, DOCKERFILE, *env_examples()]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for key in {*ENV_NAME.findall(text), *ENV_FILE_NAME.findall(text)}:
            used.setdefault(key, set()).add(str(path.relative_to(ROOT)))
    assert "CRMSYNC_DATABASE_URL" in used, "no crmsync service gets CRMSYNC_DATABASE_URL"
    unknown = {key: sorted(where) for key, where in used.items() if key not in known}
    assert not unknown, f"not fields of crmsync.settings.Settings: {unknown}"


def test_no_secret_is_written_inline() -> None:
    problems = []
    for name, svc in services().items():
        for key, value in environment(svc).items():
            if CREDENTIALS_IN_URL.search(value):
                problems.append(f"{name}: {key} holds a URL with credentials")
            if re.search(r"PASSWORD|SECRET|TOKEN", key) and not key.endswith("_FILE"):
                problems.append(f"{name}: {key} is set inline")
    assert not problems, "\n".join(problems)


def test_secret_and_env_files_are_ignored_and_have_committed_examples() -> None:
    files = {p for svc in services().values() for p in env_file_paths(svc)}
    files |= {s["file"] for s in (compose().get("secrets") or {}).values() if "file" in s}
    assert files, "no env_file or secret file: where does the database password come from?"
    for path in sorted(files):
        assert (ROOT / f"{path}.example").is_file(), f"{path}.example is not in the repo"
        assert git_ignores(path), f"{path} holds a secret but git does not ignore it"


def test_mounted_host_paths_and_declared_names_exist() -> None:
    declared_volumes = set(compose().get("volumes") or {})
    declared_secrets = set(compose().get("secrets") or {})
    problems = []
    for name, svc in services().items():
        for source, _ in bind_mounts(svc):
            if not source.startswith("./") or not (ROOT / source).exists():
                problems.append(f"{name}: bind source {source} is not a path in the repo")
        for volume in svc.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            named = source and not source.startswith((".", "/", "~"))
            if named and source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared")
        problems += [
            f"{name}: secret {s} is not declared"
            for s in secret_targets(svc)
            if s not in declared_secrets
        ]
    assert not problems, "\n".join(problems)


def crmsync_commands() -> dict[str, list[str]]:
    return {name: command(svc) for name, svc in services().items() if is_crmsync(svc)}


def test_crmsync_image_runs_only_crmsync_and_faust_commands() -> None:
    odd = {
        name: words
        for name, words in crmsync_commands().items()
        if words[:1] not in (["crmsync"], ["faust"])
    }
    assert not odd, f"neither `crmsync ...` nor `faust ...`: {odd}"


def test_crmsync_commands_exist_in_the_cli() -> None:
    problems = [
        f"{name}: {problem}"
        for name, words in crmsync_commands().items()
        if words[:1] == ["crmsync"] and (problem := cli_problem(words))
    ]
    assert not problems, "\n".join(problems)


def test_faust_workers_run_the_streams_app() -> None:
    workers = {name: words for name, words in crmsync_commands().items() if words[:1] == ["faust"]}
    assert workers, "no service runs the Faust workers"
    for name, words in workers.items():
        app = option(words, "-A")
        assert app == "streams.app" and "worker" in words, f"{name}: {shlex.join(words)}"
    assert (ROOT / "streams" / "app.py").is_file(), "the workers run streams.app: no streams/app.py"


def test_depends_on_targets_and_conditions() -> None:
    problems = []
    for name, svc in services().items():
        for target, spec in depends_on(svc).items():
            condition = (spec or {}).get("condition")
            if target not in services():
                problems.append(f"{name} depends on unknown service {target}")
            elif condition not in WAIT_CONDITIONS:
                problems.append(f"{name} -> {target}: condition {condition!r} waits for nothing")
            elif condition == "service_healthy" and "healthcheck" not in services()[target]:
                problems.append(f"{name} -> {target}: service_healthy, but it has no healthcheck")
            elif condition == "service_completed_successfully" and not is_one_shot(
                services()[target]
            ):
                problems.append(f"{name} -> {target}: waits for a long-running service to exit")
    assert not problems, "\n".join(problems)
    assert_acyclic()


def assert_acyclic() -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in depends_on(services()[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in services():
        visit(name, ())


def test_long_running_services_are_health_checked_or_wait_for_their_dependencies() -> None:
    problems = [
        name
        for name, svc in services().items()
        if not is_one_shot(svc) and "healthcheck" not in svc and not depends_on(svc)
    ]
    assert not problems, f"long-running, no healthcheck and waits for nothing: {problems}"


def test_one_shots_never_restart() -> None:
    one_shots = {name for name, svc in services().items() if is_one_shot(svc)}
    assert {"kafka-init", "migrate", "connect-register"} <= one_shots


# --- PostgreSQL and Debezium ------------------------------------------------------------------


def server_settings(words: list[str]) -> dict[str, str]:
    pairs = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-c"]
    pairs += [word.split("=", 1)[1] for word in words if word.startswith("--") and "=" in word]
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def test_postgres_is_set_up_for_logical_decoding() -> None:
    settings = server_settings(command(postgres_service()))
    assert settings.get("wal_level") == "logical"
    assert int(settings.get("max_replication_slots", "0")) >= 1
    assert int(settings.get("max_wal_senders", "0")) >= 1
    test = postgres_service()["healthcheck"]["test"]
    assert "pg_isready" in " ".join(test if isinstance(test, list) else [test])


def test_connector_captures_the_contract_tables_with_pgoutput() -> None:
    config = connector()["config"]
    tables = {t.strip() for t in config["table.include.list"].split(",")}
    assert tables >= CAPTURED_TABLES, f"not captured: {sorted(CAPTURED_TABLES - tables)}"
    assert config["plugin.name"] == "pgoutput"
    postgres_env = environment(postgres_service())
    assert config["database.hostname"] == "postgres"
    assert config["database.user"] == postgres_env["POSTGRES_USER"]
    assert config["database.dbname"] == postgres_env["POSTGRES_DB"]


def test_connector_password_resolves_from_a_mounted_properties_file() -> None:
    match = re.fullmatch(r"\$\{file:([^:}]+):([^}]+)\}", connector()["config"]["database.password"])
    assert match, "database.password must be a ${file:PATH:KEY} reference"
    path, key = match.groups()
    connect = services()["connect"]
    env = environment(connect)
    providers = {p.strip() for p in env.get("CONNECT_CONFIG_PROVIDERS", "").split(",")}
    assert "file" in providers
    assert env.get("CONNECT_CONFIG_PROVIDERS_FILE_CLASS") == (
        "org.apache.kafka.common.config.provider.FileConfigProvider"
    )
    mounted = {target: secret for secret, target in secret_targets(connect).items()}
    assert path in mounted, f"{path} is not mounted into the connect service"
    example = ROOT / f"{compose()['secrets'][mounted[path]]['file']}.example"
    keys = dict(ENV_PAIR.findall(example.read_text(encoding="utf-8")))
    assert key in keys, f"{example.relative_to(ROOT)} has no {key!r} entry"


def test_example_credentials_agree() -> None:
    """Copying the examples as they are gives a stack whose parts share one password."""
    postgres = postgres_service()
    password_secret = environment(postgres)["POSTGRES_PASSWORD_FILE"].rsplit("/", 1)[-1]
    secrets = compose()["secrets"]
    password_file = ROOT / f"{secrets[password_secret]['file']}.example"
    password = password_file.read_text(encoding="utf-8").strip()
    urls = [
        value
        for path in env_examples()
        for key, value in ENV_PAIR.findall(path.read_text(encoding="utf-8"))
        if key == "CRMSYNC_DATABASE_URL"
    ]
    assert urls, "no CRMSYNC_DATABASE_URL in the env-file examples"
    url = urlsplit(urls[0])
    env = environment(postgres)
    assert (url.hostname, url.port or 5432) == ("postgres", 5432)
    assert (url.username, url.password) == (env["POSTGRES_USER"], password)
    assert url.path.lstrip("/") == env["POSTGRES_DB"]
    for name in secrets:
        text = (ROOT / f"{secrets[name]['file']}.example").read_text(encoding="utf-8")
        assert password in text, f"secret {name}: example password differs from {password!r}"


# --- wiring between services ------------------------------------------------------------------


def crmsync_environment() -> dict[str, str]:
    envs = [environment(svc) for svc in services().values() if is_crmsync(svc)]
    assert envs
    return {key: interpolate(value) for key, value in envs[0].items()}


def test_crmsync_services_reach_kafka_and_the_crm() -> None:
    env = crmsync_environment()
    listeners = environment(services()["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    advertised = {item.split("://", 1)[1] for item in listeners.split(",")}
    assert env["CRMSYNC_KAFKA_BOOTSTRAP"] in advertised
    assert int(env["CRMSYNC_PARTITIONS"]) >= 1
    crm = urlsplit(env["CRMSYNC_CRM_BASE_URL"])
    emulator = command(services()[crm.hostname])
    assert option(emulator, "--port") == str(crm.port)
    assert option(emulator, "--host") == "0.0.0.0", "the emulator must listen beyond loopback"


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words[:-1] else None


def test_health_probes_target_the_ports_the_services_listen_on() -> None:
    """A TCP probe's port is the service's --port, else the Settings metrics port it serves."""
    problems = []
    for name, svc in services().items():
        probe = svc.get("healthcheck", {}).get("test", [])
        if not is_crmsync(svc) or "create_connection" not in " ".join(map(str, probe)):
            continue
        field = METRICS_PORT_SETTING.get(name)
        expected = option(command(svc), "--port") or (
            field and str(Settings.model_fields[field].default)
        )
        if str(probe[-1]) != expected:
            problems.append(f"{name}: probes port {probe[-1]}, listens on {expected}")
    assert not problems, "\n".join(problems)


def test_connect_register_runs_the_script_on_the_connector_file() -> None:
    register = services()["connect-register"]
    words = command(register)
    mounts = {PurePosixPath(target): ROOT / source for source, target in bind_mounts(register)}

    def host_path(container_path: str) -> Path:
        path = PurePosixPath(container_path)
        for target, source in mounts.items():
            if path.is_relative_to(target):
                return source / path.relative_to(target)
        raise AssertionError(f"{container_path} is not mounted into connect-register")

    script, json_file, url = words[-3:]
    assert host_path(script).resolve() == REGISTER_SCRIPT.resolve()
    assert host_path(json_file).resolve() == CONNECTOR_FILE.resolve()
    assert urlsplit(url).hostname == "connect" and urlsplit(url).port == 8083


# --- the Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_copies_only_existing_paths() -> None:
    sources = [
        word
        for op, arg in dockerfile_instructions()
        if op == "COPY" and not arg.startswith("--from")
        for word in shlex.split(arg)[:-1]
        if not word.startswith("--")
    ]
    assert sources, "the Dockerfile copies nothing"
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"the Dockerfile copies paths that do not exist: {missing}"


def test_dockerfile_installs_java_and_the_project_and_drops_root() -> None:
    instructions = dockerfile_instructions()
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "openjdk-17-jre-headless" in runs and "pip install ." in runs


# --- connect/register.sh ------------------------------------------------------------------------


def run_register(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", **env}
    return subprocess.run(
        ["sh", str(REGISTER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )


def test_register_script_extracts_the_config_object() -> None:
    result = run_register("--dry-run", str(CONNECTOR_FILE))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == connector()["config"]


class FakeConnect(BaseHTTPRequestHandler):
    """Kafka Connect's REST API as register.sh uses it: 409 first (rebalance), then states."""

    states: list[list[str]]
    puts: list[tuple[str, Any]]

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.puts.append((self.path, body))
        self.reply(409 if len(self.puts) == 1 else 201, {"name": "x", "config": body})

    def do_GET(self) -> None:
        states = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        self.reply(
            200,
            {
                "name": "crmsync-postgres",
                "connector": {"state": states[0], "worker_id": "connect:8083"},
                "tasks": [
                    {
                        "id": i,
                        "state": s,
                        "worker_id": "connect:8083",
                        **({"trace": 'boom "state":"RUNNING"'} if s == "FAILED" else {}),
                    }
                    for i, s in enumerate(states[1:])
                ],
                "type": "source",
            },
        )

    def reply(self, code: int, document: object) -> None:
        data = json.dumps(document, indent=1).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_connect() -> Iterator[tuple[str, type[FakeConnect]]]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    handler = type("Handler", (FakeConnect,), {"states": [], "puts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


FAST = {"REGISTER_POLL_INTERVAL": "0.05", "REGISTER_TIMEOUT": "20"}


def test_register_script_puts_the_config_and_waits_for_running(fake_connect) -> None:
    url, handler = fake_connect
    handler.states = [
        ["UNASSIGNED"],
        ["RUNNING"],
        ["RUNNING", "UNASSIGNED"],
        ["RUNNING", "RUNNING"],
    ]
    result = run_register(str(CONNECTOR_FILE), url, **FAST)
    assert result.returncode == 0, result.stderr
    name = connector()["name"]
    assert [path for path, _ in handler.puts] == [f"/connectors/{name}/config"] * 2
    assert handler.puts[-1][1] == connector()["config"]
    assert handler.states == [["RUNNING", "RUNNING"]], "returned before every task ran"


def test_register_script_fails_when_a_task_fails(fake_connect) -> None:
    url, handler = fake_connect
    handler.states = [["RUNNING", "FAILED"]]
    result = run_register(str(CONNECTOR_FILE), url, **FAST)
    assert result.returncode != 0
    assert "failed" in result.stderr
