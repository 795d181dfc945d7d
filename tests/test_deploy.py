"""Deployment files without a Docker engine: docker-compose.yml against the
Compose Specification schema, and compose/Dockerfile/gunicorn.conf.py against
the project (modules, flags, paths, ports, routes, stages, build context).

The schema is tests/data/compose-spec.json (source and version in
tests/data/README.md). Needs PyYAML and jsonschema.
"""
import fnmatch
import glob
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


def parse_dockerfile(text):
    """[(stage_name, base, [(INSTRUCTION, argument_text), ...]), ...] in file order.

    Joins backslash continuations and drops comments; ARG defaults declared
    before the first FROM are substituted into FROM lines.
    """
    lines, buf = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    if buf:
        lines.append(buf)
    args, stages = {}, []
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instr == "FROM":
            rest = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                          lambda m: args.get(m.group(1) or m.group(2), ""), rest)
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append((name, words[0], []))
        elif stages:
            stages[-1][2].append((instr, rest))
    return stages


@pytest.fixture(scope="module")
def stages():
    return parse_dockerfile(DOCKERFILE.read_text())


def stage(stages, name):
    for stage_name, base, instructions in stages:
        if stage_name == name:
            return base, instructions
    raise AssertionError(f"Dockerfile has no stage {name!r}")


def instructions_of(stages, name, instr):
    """The arguments of every ``instr`` in stage ``name`` and the stages it is built FROM."""
    base, instructions = stage(stages, name)
    names = {s[0] for s in stages}
    inherited = instructions_of(stages, base, instr) if base in names else []
    return inherited + [rest for i, rest in instructions if i == instr]


def exec_form(text):
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD argument as a list of words."""
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return shlex.split(text)


def copy_sources(rest):
    """(sources, dest, from_stage) of a COPY/ADD argument text."""
    words = json.loads(rest) if rest.strip().startswith("[") else shlex.split(rest)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    return paths[:-1], paths[-1], from_stage


def dockerignore_patterns():
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((negate, _glob_regex(pat)))
    return patterns


def _glob_regex(pattern):
    """Docker's .dockerignore glob (Go filepath.Match plus ``**``) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif c == "*":
            out += "[^/]*"
            i += 1
        elif c == "?":
            out += "[^/]"
            i += 1
        elif c == "[":
            j = pattern.index("]", i)
            out += "[" + pattern[i + 1:j].replace("!", "^", 1) + "]"
            i = j + 1
        else:
            out += re.escape(c)
            i += 1
    return re.compile(out + r"\Z")


def is_ignored(relpath, patterns):
    """Whether .dockerignore keeps ``relpath`` (or a folder above it) out of the context."""
    parts = Path(relpath).parts
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    ignored = False
    for negate, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def load_gunicorn_conf(monkeypatch, **env):
    """gunicorn.conf.py as gunicorn reads it, under ``env``: (module dict, gunicorn Config)."""
    from gunicorn.config import Config
    for name in ("CNN_BIND", "CNN_WORKERS", "CNN_THREADS", "CNN_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace = runpy.run_path(str(GUNICORN_CONF))
    cfg = Config()
    for key, value in namespace.items():
        if key in cfg.settings:
            cfg.set(key, value)  # gunicorn's own validation of every setting
    return namespace, cfg


def volume_mounts(service):
    """{volume_or_host_path: container_target} of a compose service's volumes."""
    mounts = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source"), v["target"]
        mounts[source] = target
    return mounts


def inside(path, folder):
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return os.path.commonpath([path, folder]) == folder


def bind_port(bind):
    return int(bind.rpartition(":")[2])


def url_path(words):
    urls = [m for w in words for m in re.findall(r"https?://[^'\" ]+", w)]
    assert len(urls) == 1, f"expected one URL in the healthcheck, got {urls}"
    path = "/" + urls[0].split("://", 1)[1].partition("/")[2]
    return path.split("?")[0]


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory):
    """The URL rules of the real Flask app (created with an empty model folder)."""
    models = tmp_path_factory.mktemp("no-models")
    mp = pytest.MonkeyPatch()
    mp.setenv("CNN_MODEL_DIR", str(models))
    mp.syspath_prepend(str(ROOT))
    try:
        from service import create_app
        app = create_app()
        return {rule.rule for rule in app.url_map.iter_rules()}
    finally:
        mp.undo()


# ------------------------------------------------------------ the schema


def test_compose_file_follows_the_compose_specification(compose):
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema.get("title") == "Compose Specification"
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_compose_file(compose):
    """The check has teeth: a misspelt key and a wrong depends_on condition fail."""
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["prots"] = ["8000:8000"]
    broken["services"]["api"]["depends_on"]["train"]["condition"] = "service_finished"
    messages = [e.message for e in cls(schema).iter_errors(broken)]
    assert any("prots" in m for m in messages), messages
    assert not cls(schema).is_valid(broken)


# ------------------------------------------------------ compose vs project


def test_services_and_dependency(compose):
    services = compose["services"]
    assert {"train", "api", "proxy"} <= set(services)
    assert services["api"]["depends_on"]["train"]["condition"] == \
        "service_completed_successfully"
    assert "models" in compose.get("volumes", {})


def test_train_command_runs_the_training_module(compose):
    command = compose["services"]["train"]["command"]
    words = exec_form(command) if isinstance(command, str) else list(command)
    assert words[:3] == ["python", "-m", "cnn.train"], words
    r = subprocess.run([sys.executable, "-m", "cnn.train", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    # Every flag of the compose command is one the CLI accepts.
    from cnn.train import build_parser
    args = build_parser().parse_args(words[3:])
    assert args.out, "the train command must say where the weights go (--out)"


def test_train_output_lands_in_the_models_volume_the_api_reads(compose):
    train, api = compose["services"]["train"], compose["services"]["api"]
    from cnn.train import build_parser
    out = build_parser().parse_args(list(train["command"])[3:]).out
    train_mount = volume_mounts(train).get("models")
    api_mount = volume_mounts(api).get("models")
    assert train_mount, "train must mount the models volume"
    assert api_mount, "api must mount the models volume"
    assert os.path.isabs(out) and inside(out, train_mount), (out, train_mount)
    model_dir = api["environment"]["CNN_MODEL_DIR"]
    assert model_dir == api_mount, (model_dir, api_mount)
    # The weights file sits directly in the folder the service scans.
    assert os.path.dirname(os.path.normpath(out)) == os.path.normpath(model_dir)
    assert out.endswith(".npz")


def nginx_conf():
    return (ROOT / "deploy" / "nginx.conf").read_text()


def nginx_setting(name):
    m = re.search(rf"^\s*{name}\s+([^;]+);", nginx_conf(), re.M)
    assert m, f"deploy/nginx.conf has no {name}"
    return m.group(1).strip()


def nginx_seconds(value):
    m = re.fullmatch(r"(\d+)s?", value)
    assert m, value
    return int(m.group(1))


def test_the_proxy_publishes_the_port_and_forwards_to_gunicorns_bind(compose, monkeypatch):
    api, proxy = compose["services"]["api"], compose["services"]["proxy"]
    env = {k: str(v) for k, v in api.get("environment", {}).items() if k == "CNN_BIND"}
    _, cfg = load_gunicorn_conf(monkeypatch, **env)
    [bind] = cfg.bind
    assert bind.startswith("0.0.0.0:"), "in a container gunicorn must listen on all interfaces"
    assert "ports" not in api, "the api is reached through the proxy only"
    assert [int(str(p)) for p in api["expose"]] == [bind_port(bind)]
    [published] = [str(p) for p in proxy["ports"]]
    listen = int(nginx_setting("listen").split()[0])
    assert int(published.split(":")[-1].split("/")[0]) == listen
    assert nginx_setting("server").split()[0] == f"api:{bind_port(bind)}"
    mounts = [str(v).split(":") for v in proxy["volumes"]]
    assert ["./deploy/nginx.conf", "/etc/nginx/conf.d/default.conf", "ro"] in mounts
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"


# ---------------------------------------------------------------- replicas


def test_nothing_pins_the_api_to_one_container(compose):
    """`docker compose up --scale api=N` needs an api service any number of
    containers can share: no fixed name, no published host port, the models
    volume read-only for all, and a state folder outside it."""
    api = compose["services"]["api"]
    assert "container_name" not in api, "a container_name allows one replica only"
    assert "ports" not in api, "a published host port allows one replica per port"
    assert api.get("scale", 1) >= 1 and "replicas" not in api.get("deploy", {}), \
        "the replica count is --scale's to choose"
    models = [v for v in api["volumes"] if str(v).split(":")[0] == "models"]
    assert models == ["models:/models:ro"], models
    # The model repository writes its state file in CNN_STATE_DIR (default: the
    # models folder, read-only here): it must be a writable volume every
    # replica shares, so load/unload through one replica reaches all.
    state_dir = api["environment"].get("CNN_STATE_DIR")
    assert state_dir, "CNN_STATE_DIR must leave the read-only models folder"
    assert not inside(state_dir, api["environment"]["CNN_MODEL_DIR"])
    [state] = [str(v).split(":") for v in api["volumes"]
               if str(v).split(":")[1] == state_dir]
    assert state[0] in compose["volumes"], "state must be a named volume, shared by replicas"
    assert "ro" not in state[2:], "the state volume must be writable"
    from service.config import DEFAULTS
    assert "CNN_STATE_DIR" in DEFAULTS


def test_every_api_env_var_is_one_the_service_reads(compose):
    known = service_env_names()
    for svc in ("api",):
        unknown = set(compose["services"][svc].get("environment", {})) - known
        assert not unknown, f"{svc}: the service reads no {sorted(unknown)}"


def service_env_names():
    """Every environment variable service/config.py or service/gunicorn.conf.py reads."""
    from service.config import DEFAULTS
    conf = (ROOT / "service" / "gunicorn.conf.py").read_text()
    names = set(DEFAULTS)
    names |= set(re.findall(r"""(?:environ\.get|_positive_int_env|getenv)\(\s*["'](\w+)["']""",
                            conf))
    names |= set(re.findall(r'"((?:CNN|OMP|OPENBLAS)_\w+)"', conf))
    names |= {"GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR"}   # read by gunicorn / the client
    assert {"CNN_BIND", "CNN_WORKERS", "CNN_THREADS", "CNN_MODEL_DIR"} <= names
    return names


def test_the_proxy_follows_the_replicas(compose):
    """nginx must spread over every api replica and notice scaling: the
    upstream name re-resolved at run time through Docker's DNS."""
    upstream = re.search(r"upstream\s+\w+\s*\{([^}]*)\}", nginx_conf()).group(1)
    [server] = re.findall(r"^\s*server\s+([^;]+);", upstream, re.M)
    assert "resolve" in server.split()[1:], "without resolve nginx resolves api once, at start"
    assert re.search(r"^\s*zone\s+\w+\s+\d+[km];", upstream, re.M), \
        "resolve needs the upstream group in shared memory (zone)"
    # the resolver at the http level (the file is included inside http {}), or
    # in the upstream: nginx looks in those two places only, not in server {}
    outside = re.sub(r"\bserver\s*\{.*\}\s*$", "", re.sub(r"upstream\s+\w+\s*\{[^}]*\}", "",
                                                        nginx_conf()), flags=re.S)
    resolver = re.search(r"^\s*resolver\s+([^;]+);", outside, re.M) or \
        re.search(r"^\s*resolver\s+([^;]+);", upstream, re.M)
    assert resolver, "resolve needs a resolver at the http level or in the upstream"
    words = resolver.group(1).split()
    assert words[0] == "127.0.0.11", "Docker's embedded DNS on a compose network"
    valid = [w for w in words if w.startswith("valid=")]
    assert valid and nginx_seconds(valid[0].split("=")[1]) <= 30, \
        "without valid= nginx keeps Docker's 600 s TTL"
    # `resolve` is in open-source nginx from 1.27.3 on
    image = compose["services"]["proxy"]["image"]
    m = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?(?:-\w+)?", image)
    assert m, image
    assert tuple(int(g or 99) for g in m.groups()) >= (1, 27, 3), image
    assert compose["services"]["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_prometheus_scrapes_every_replica(compose, app_routes):
    """Each replica's /metrics, found by the service name on the compose
    network (one A record per replica), not through the proxy."""
    prometheus = compose["services"]["prometheus"]
    assert prometheus.get("profiles"), "Prometheus is opt-in (a profile)"
    mounts = {target: source for source, target, *_ in
              (str(v).split(":") for v in prometheus["volumes"])}
    config_file = mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((ROOT / config_file).read_text())
    [job] = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") in app_routes
    assert "static_configs" not in job, "a fixed target list misses scaled replicas"
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd.get("type", "SRV") == "A"
    api_bind = compose["services"]["api"]["environment"]["CNN_BIND"]
    assert sd["port"] == bind_port(api_bind)
    assert [int(str(p)) for p in compose["services"]["api"]["expose"]] == [sd["port"]]
    # published on loopback only: the metrics are not for the network
    for port in prometheus.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), port


def test_the_proxy_limits_match_the_service(monkeypatch):
    from service.config import DEFAULTS
    _, cfg = load_gunicorn_conf(monkeypatch)
    size = nginx_setting("client_max_body_size")
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 == \
        DEFAULTS["CNN_MAX_CONTENT_LENGTH"]
    assert f"{DEFAULTS['CNN_MAX_CONTENT_LENGTH']:,} bytes" in nginx_conf()
    assert nginx_seconds(nginx_setting("client_body_timeout")) == DEFAULTS["CNN_BODY_TIMEOUT"]
    assert nginx_seconds(nginx_setting("client_header_timeout")) == cfg.keepalive
    assert nginx_seconds(nginx_setting("proxy_read_timeout")) >= cfg.timeout
    assert nginx_setting("proxy_request_buffering") == "on"
    # upstream idle connections close on nginx's side first (no 502 on a reused one)
    upstream = re.search(r"upstream\s+\w+\s*\{([^}]*)\}", nginx_conf()).group(1)
    idle = re.search(r"keepalive_timeout\s+(\w+);", upstream)
    assert idle and nginx_seconds(idle.group(1)) < cfg.keepalive


def test_api_healthcheck_asks_an_existing_route_on_the_bind_port(compose, app_routes):
    api = compose["services"]["api"]
    words = api["healthcheck"]["test"]
    assert words[0] in ("CMD", "CMD-SHELL")
    assert words[1] == "python", "slim images have no curl: the healthcheck uses python"
    assert url_path(words) == "/ready"
    assert "/ready" in app_routes
    url = re.search(r"https?://[^'\" ]+", " ".join(words)).group(0)
    port = int(url.split("://", 1)[1].split("/")[0].rpartition(":")[2])
    assert port == bind_port(api["environment"]["CNN_BIND"])


def test_compose_build_targets_exist_in_the_dockerfile(compose, stages):
    names = [s[0] for s in stages]
    assert len(set(names)) == len(names), f"duplicate stage names: {names}"
    for svc in ("train", "api"):
        build = compose["services"][svc]["build"]
        assert Path(ROOT, build.get("context", ".")).resolve() == ROOT
        assert Path(ROOT, build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
        assert build["target"] in names, (svc, build["target"], names)
    # `docker build .` without a target gives the API image.
    assert stages[-1][0] == compose["services"]["api"]["build"]["target"]


def test_compose_train_command_matches_the_train_image(compose, stages):
    [cmd] = instructions_of(stages, "train", "CMD")[-1:]
    assert exec_form(cmd) == list(compose["services"]["train"]["command"])


# --------------------------------------------------------- the Dockerfile


def test_build_stage_installs_the_wheel_it_builds(stages):
    """The venv gets the wheel file `pip wheel` wrote, not a second build of the tree."""
    _, build_instr = stage(stages, "build")
    runs = " && ".join(rest for i, rest in build_instr if i == "RUN")
    steps = [step.strip() for step in re.split(r"&&|;", runs)]
    wheel = [s for s in steps if re.match(r"(python -m )?pip wheel\b", s)
             or re.match(r"python -m build\b.*--wheel", s)]
    assert wheel, "the build stage must build a wheel (pip wheel / python -m build --wheel)"
    outdir = re.search(r"(?:--wheel-dir|-w|--outdir|-o)[ =](\S+)", wheel[0])
    assert outdir, wheel[0]
    installs = [s for s in steps if re.match(r"(python -m )?pip install\b", s)
                and "--upgrade pip" not in s]
    assert installs, "the build stage must pip install the wheel"
    for step in installs:
        targets = [w for w in shlex.split(step)[2:] if not w.startswith("-")]
        assert targets and all(t.endswith(".whl") and t.startswith(outdir.group(1).rstrip("/"))
                               for t in targets), f"installs {targets}, not the built wheel"
    # the wheel's name is the project's (pip's normalised distribution name)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert any(Path(t).name.startswith(re.sub(r"[-_.]+", "_", name) + "-")
               for step in installs for t in shlex.split(step)[2:])


def test_dockerfile_is_multi_stage_with_slim_runtime(stages):
    build_base, build_instr = stage(stages, "build")
    assert build_base.startswith("python:3.11-slim")
    runs = " ".join(rest for i, rest in build_instr if i == "RUN")
    assert "build-essential" in runs and "pip install" in runs
    for target in ("train", "api"):
        runs = " ".join(instructions_of(stages, target, "RUN"))
        assert "build-essential" not in runs, f"{target} image must not carry compilers"
        assert "libgomp1" in runs, f"{target} needs libgomp1 for the OpenMP kernels"
        copies = [copy_sources(c) for c in instructions_of(stages, target, "COPY")]
        assert any(frm == "build" for _, _, frm in copies), "runtime copies the built venv"
        users = instructions_of(stages, target, "USER")
        assert users and users[-1] not in ("root", "0"), f"{target} must run as non-root"


def test_train_image_has_the_dataset_where_cnn_looks():
    from cnn.data import DEFAULT_DATA_DIR
    stages = parse_dockerfile(DOCKERFILE.read_text())
    runs = " ".join(instructions_of(stages, "train", "RUN"))
    assert "dataset-fashion-mnist" in runs
    # Debian's package installs into this folder, cnn.data's default.
    assert DEFAULT_DATA_DIR == "/usr/share/datasets/fashion-mnist"
    api_runs = " ".join(instructions_of(stages, "api", "RUN"))
    assert "dataset-fashion-mnist" not in api_runs, "serving never reads the data set"


def test_api_image_command_exposes_and_healthcheck(stages, monkeypatch, app_routes):
    [cmd] = instructions_of(stages, "api", "CMD")[-1:]
    words = exec_form(cmd)
    # `cnn serve`: gunicorn with the settings file the installed package ships,
    # so the image needs nothing from the checkout beside the wheel.
    assert words == ["cnn", "serve"]
    from cnn.serve import APP, gunicorn_command, settings_path
    command, _ = gunicorn_command(words[2:])
    assert command[-3:] == ["-c", settings_path(), APP]
    assert Path(settings_path()).resolve() == (ROOT / "service" / "gunicorn.conf.py").resolve()
    copies = [copy_sources(c) for c in instructions_of(stages, "api", "COPY")]
    assert not [srcs for srcs, _, frm in copies if frm is None], \
        "the api stage takes everything from the built venv, nothing from the checkout"
    # service:create_app() as gunicorn resolves it: module attribute, called.
    module, _, call = APP.partition(":")
    monkeypatch.syspath_prepend(str(ROOT))
    import importlib
    factory = getattr(importlib.import_module(module), call.removesuffix("()"))
    assert callable(factory)
    # EXPOSE is gunicorn's default bind port.
    _, cfg = load_gunicorn_conf(monkeypatch)
    exposed = [int(p.split("/")[0]) for e in instructions_of(stages, "api", "EXPOSE")
               for p in e.split()]
    assert exposed == [bind_port(cfg.bind[0])]
    [health] = instructions_of(stages, "api", "HEALTHCHECK")
    health_cmd = health[health.index("CMD") + 3:]
    hwords = exec_form(health_cmd)
    assert hwords[0] == "python"
    assert url_path(hwords) == "/health"
    assert "/health" in app_routes


def test_runtime_model_dir_matches_compose(stages, compose):
    envs = " ".join(instructions_of(stages, "api", "ENV"))
    m = re.search(r"CNN_MODEL_DIR[= ](\S+)", envs)
    assert m and m.group(1) == compose["services"]["api"]["environment"]["CNN_MODEL_DIR"]


def test_copy_sources_exist_and_are_in_the_build_context(stages):
    patterns = dockerignore_patterns()
    checked = 0
    for name, _, instructions in stages:
        for instr, rest in instructions:
            if instr not in ("COPY", "ADD"):
                continue
            sources, _, from_stage = copy_sources(rest)
            if from_stage is not None:
                assert from_stage in [s[0] for s in stages], from_stage
                continue
            for src in sources:
                matches = glob.glob(str(ROOT / src))
                assert matches, f"stage {name}: COPY source {src!r} does not exist"
                for m in matches:
                    rel = os.path.relpath(m, ROOT)
                    assert not is_ignored(rel, patterns), \
                        f"stage {name}: COPY {src!r} but .dockerignore excludes {rel}"
                    if os.path.isdir(m):
                        kept = [f for f in Path(m).rglob("*")
                                if f.is_file() and not is_ignored(os.path.relpath(f, ROOT),
                                                                  patterns)]
                        assert kept, f"stage {name}: everything in {src!r} is ignored"
                checked += 1
    assert checked


def test_build_stage_copies_everything_the_package_is_built_from(stages):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "setup.py", "pyx", project["project"]["readme"]}
    needed |= {pkg.split(".")[0] for pkg in project["tool"]["setuptools"]["packages"]}
    copied = set()
    for rest in instructions_of(stages, "build", "COPY"):
        sources, _, frm = copy_sources(rest)
        if frm is None:
            copied |= {s.rstrip("/") for s in sources}
    assert needed <= copied, f"the build stage does not COPY {sorted(needed - copied)}"


def test_dockerignore_keeps_host_build_products_out():
    patterns = dockerignore_patterns()
    for rel in ("cnn/_conv.cpython-311-x86_64-linux-gnu.so", "cnn/backends/x.cpython-311.so",
                "pyx/conv.c", "build/lib/cnn/_conv.so", "cnn/__pycache__/io.cpython-311.pyc",
                "models/convnet.npz", ".git/HEAD"):
        assert is_ignored(rel, patterns), rel
    for rel in ("pyx/conv.pyx", "cnn/io.py", "cnn/backends/__init__.py", "setup.py",
                "pyproject.toml", "README.md", "gunicorn.conf.py", "service/__init__.py"):
        assert not is_ignored(rel, patterns), rel
    # Every real source file of the packages goes into the context.
    for f in list((ROOT / "cnn").rglob("*.py")) + list((ROOT / "pyx").glob("*.pyx")):
        assert not is_ignored(os.path.relpath(f, ROOT), patterns), f


def test_dockerignore_matcher_follows_docker_rules():
    pats = [(False, _glob_regex("**/*.so")), (False, _glob_regex("build")),
            (True, _glob_regex("build/keep.txt"))]
    assert is_ignored("a.so", pats) and is_ignored("x/y/a.so", pats)
    assert is_ignored("build/lib/a.py", pats)
    assert not is_ignored("build/keep.txt", pats)
    assert not is_ignored("src/a.py", pats)
    assert fnmatch.fnmatch("a.so", "*.so")


# -------------------------------------------------------- gunicorn.conf.py


def test_gunicorn_conf_defaults(monkeypatch):
    ns, cfg = load_gunicorn_conf(monkeypatch)
    assert cfg.bind == ["127.0.0.1:8000"]   # loopback unless told (containers set it)
    assert cfg.worker_class_str == "gevent" and cfg.worker_connections >= 100
    assert cfg.workers == max(1, min(ns["CORES"], 4))
    assert cfg.preload_app is False
    assert cfg.timeout > 0 and 0 < cfg.graceful_timeout and cfg.keepalive > 0
    assert cfg.max_requests > 0 and 0 < cfg.max_requests_jitter < cfg.max_requests
    assert cfg.accesslog == "-"
    assert any(t in cfg.access_log_format for t in ("%(L)s", "%(M)s", "%(D)s", "%(T)s"))


def test_gunicorn_conf_reads_the_environment(monkeypatch):
    _, cfg = load_gunicorn_conf(monkeypatch, CNN_BIND="127.0.0.1:9123", CNN_WORKERS="3")
    assert cfg.bind == ["127.0.0.1:9123"] and cfg.workers == 3


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_gunicorn_conf_rejects_bad_worker_counts(monkeypatch, value):
    with pytest.raises(SystemExit, match="CNN_WORKERS"):
        load_gunicorn_conf(monkeypatch, CNN_WORKERS=value)


def test_graceful_timeout_fits_compose_stop_grace_period(compose, monkeypatch):
    _, cfg = load_gunicorn_conf(monkeypatch)
    grace = compose["services"]["api"].get("stop_grace_period", "10s")
    seconds = int(re.fullmatch(r"(\d+)s", str(grace)).group(1))
    assert cfg.graceful_timeout < seconds


class _FakeLog:
    def info(self, *args):
        pass


class _FakeServer:
    log = _FakeLog()

    def __init__(self, num_workers):
        self.num_workers = num_workers


class _FakeWorker:
    pid = 12345


THREAD_VARS = ("CNN_THREADS", "CNN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "CNN_WORKERS")


@pytest.mark.parametrize("workers,cores,expected", [(2, 2, 1), (1, 2, 2), (4, 16, 4),
                                                    (3, 2, 1), (2, 7, 3)])
def test_post_fork_splits_the_cores_between_workers(monkeypatch, workers, cores, expected):
    ns, _ = load_gunicorn_conf(monkeypatch)
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    assert ns["kernel_threads"](workers, cores) == expected
    assert workers * expected <= cores or expected == 1
    ns["post_fork"](_FakeServer(workers), _FakeWorker())
    split = str(ns["kernel_threads"](workers))
    for name in THREAD_VARS[:-1]:
        assert os.environ[name] == split
    assert os.environ["CNN_WORKERS"] == str(workers)


def test_post_fork_keeps_the_users_thread_setting(monkeypatch):
    ns, _ = load_gunicorn_conf(monkeypatch)
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CNN_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    ns["post_fork"](_FakeServer(2), _FakeWorker())
    assert os.environ["CNN_THREADS"] == "3"
    assert os.environ["CNN_NUM_THREADS"] == "3"
    assert os.environ["OMP_NUM_THREADS"] == "5"


def test_gunicorn_conf_imports_nothing_heavy():
    """The master must not load NumPy/OpenMP before forking workers."""
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "bad = [m for m in ('numpy', 'cnn', 'service', 'scipy') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code, str(GUNICORN_CONF)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_installed_packages_carry_their_data_files():
    """The images pip-install the project (not editable): every non-Python file
    inside a package (templates, ...) must be declared as package data, or the
    image lacks it (e.g. GET / -> TemplateNotFound -> 500)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data = setuptools_cfg.get("package-data", {})
    patterns = dockerignore_patterns()
    missing = []
    for pkg in setuptools_cfg["packages"]:
        folder = ROOT.joinpath(*pkg.split("."))
        declared = package_data.get(pkg, []) + package_data.get("*", [])
        for f in folder.rglob("*"):
            rel_pkg = f.relative_to(folder).as_posix()
            rel_root = os.path.relpath(f, ROOT)
            if (not f.is_file() or f.suffix in (".py", ".pyx", ".pxd", ".pxi", ".c")
                    or is_ignored(rel_root, patterns)):
                continue
            # files of a subpackage listed on its own are that subpackage's business
            if any(p.startswith(pkg + ".") and rel_root.startswith(p.replace(".", "/") + "/")
                   for p in setuptools_cfg["packages"]):
                continue
            if not any(fnmatch.fnmatch(rel_pkg, d) for d in declared):
                missing.append(rel_root)
    assert not missing, (
        f"not in [tool.setuptools.package-data] of pyproject.toml, so missing from the "
        f"installed package and the Docker images: {missing}")
