"""deploy/k8s/ without a cluster: every manifest parsed, validated against the
Kubernetes JSON schemas (the `kubernetes-validate` package carries them
offline; skipped without it), and checked against the project: image, ports,
probe paths (real routes of service.create_app, answering as a probe needs),
environment variables the service reads, CPU = CNN_WORKERS x CNN_THREADS,
selectors, the Service's target port, the autoscaler's target, the volume.

KServe's ServingRuntime and InferenceService have no schema there: their
fields are checked against the lists in KServe's documentation and CRDs
(serving.kserve.io v1alpha1 ServingRuntime, v1beta1 InferenceService), and
their containers against the Kubernetes Container schema.
"""
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.test_deploy import ROOT, bind_port, inside, load_gunicorn_conf, service_env_names

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31"   # oldest release still in support when this was written

# KServe fields, from its CRDs (config/crd/full) and the ServingRuntime docs
SERVING_RUNTIME_SPEC = {
    "supportedModelFormats", "protocolVersions", "multiModel", "disabled", "containers",
    "volumes", "annotations", "labels", "nodeSelector", "affinity", "tolerations",
    "imagePullSecrets", "builtInAdapter", "grpcEndpoint", "grpcDataEndpoint",
    "httpDataEndpoint", "replicas", "storageHelper", "workerSpec", "hostIPC", "schedulerName",
    "resourceClaims"}
MODEL_FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}
PROTOCOL_VERSIONS = {"v1", "v2", "grpc-v1", "grpc-v2"}
INFERENCE_SERVICE_SPEC = {"predictor", "transformer", "explainer"}
PREDICTOR_FIELDS = {   # the component fields; the pod spec fields are not used here
    "model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
    "labels", "annotations", "deploymentStrategy", "autoScaling", "serviceAccountName",
    "nodeSelector", "tolerations", "affinity", "volumes", "containers", "imagePullSecrets"}
MODEL_EXTRA_FIELDS = {   # predictor.model = a Container plus these
    "modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage"}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "images", "labels", "namespace",
                        "namePrefix", "nameSuffix", "commonAnnotations", "patches",
                        "configMapGenerator", "secretGenerator", "components"}


# ------------------------------------------------------------------ helpers


def load(path):
    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def manifests():
    """{(kind, name): (file, object)} of every manifest under deploy/k8s."""
    found = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load(path):
            if doc.get("kind") == "Kustomization":
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = (path, doc)
    return found


def one(kind, name=None):
    objs = [obj for (k, n), (_, obj) in manifests().items() if k == kind and name in (None, n)]
    assert len(objs) == 1, f"expected one {kind} {name or ''}, found {len(objs)}"
    return objs[0]


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def cpu_cores(quantity):
    """A Kubernetes CPU quantity ("2", "1500m", 2) in cores."""
    text = str(quantity)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", text)
    assert m, f"not a CPU quantity: {quantity!r}"
    return float(m.group(1)) / (1000 if m.group(2) else 1)


def container_port(container, port):
    """The containerPort a probe or Service port (number or name) refers to."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def package_version():
    import cnn
    return cnn.__version__


@pytest.fixture(scope="module")
def probe_app(tmp_path_factory):
    """The real Flask app over an empty models folder and over one with a model:
    {path: (status without a model, status with one)} for GET."""
    from threadpoolctl import ThreadpoolController

    from service import create_app
    controller = ThreadpoolController()
    saved = [(lib, lib.get_num_threads()) for lib in controller.lib_controllers]
    empty = tmp_path_factory.mktemp("k8s-no-models")
    full = tmp_path_factory.mktemp("k8s-models")
    (full / "tiny.npz").write_bytes((ROOT / "tests" / "data" /
                                     "fmnist_weights_4ad5d28.npz").read_bytes())
    settings = {"TESTING": True, "CNN_THREADS": 1, "CNN_RELOAD_INTERVAL": 0}
    try:
        apps = [create_app(dict(settings, CNN_MODEL_DIR=str(folder))) for folder in (empty, full)]
        routes = {rule.rule for rule in apps[0].url_map.iter_rules()}

        def status(path):
            assert path in routes, f"{path} is not a route of service.create_app"
            return tuple(app.test_client().get(path).status_code for app in apps)
        yield status
    finally:
        for lib, n in saved:
            lib.set_num_threads(n)


def check_probes(container, probe_app, ready_paths=("/ready", "/v2/health/ready"),
                 live_paths=("/health", "/v2/health/live")):
    """Readiness: 503 without a model, 200 with one. Liveness (and start-up):
    200 either way, so an empty volume never restarts pods in a loop."""
    for kind, allowed, expected in (("readinessProbe", ready_paths, (503, 200)),
                                    ("livenessProbe", live_paths, (200, 200)),
                                    ("startupProbe", live_paths, (200, 200))):
        probe = container.get(kind)
        if probe is None:
            assert kind == "startupProbe", f"{container['name']} has no {kind}"
            continue
        get = probe["httpGet"]
        assert get["path"] in allowed, (kind, get["path"])
        assert probe_app(get["path"]) == expected, (kind, get["path"])
        bind = env_of(container)["CNN_BIND"]
        assert container_port(container, get["port"]) == bind_port(bind), (kind, get["port"])


def check_resources(container):
    """CPU request = limit = CNN_WORKERS x CNN_THREADS; memory bounded."""
    env = env_of(container)
    cores = int(env["CNN_WORKERS"]) * int(env["CNN_THREADS"])
    res = container["resources"]
    assert cpu_cores(res["requests"]["cpu"]) == cores, "cpu request != workers x threads"
    assert cpu_cores(res["limits"]["cpu"]) == cores, "cpu limit != workers x threads"
    assert "memory" in res["requests"] and "memory" in res["limits"]


def check_env(container, monkeypatch):
    env = env_of(container)
    unknown = set(env) - service_env_names()
    assert not unknown, f"{container['name']}: the service reads no {sorted(unknown)}"
    # the values the settings files accept, as they would read them
    _, cfg = load_gunicorn_conf(monkeypatch, **{k: v for k, v in env.items()
                                               if k in ("CNN_BIND", "CNN_WORKERS")})
    assert cfg.bind == [env["CNN_BIND"]] and cfg.bind[0].startswith("0.0.0.0:")
    assert cfg.workers == int(env["CNN_WORKERS"])
    from service.config import load_config
    checked, _ = load_config(environ={k: v for k, v in env.items() if k.startswith("CNN_")
                                      and k not in ("CNN_BIND", "CNN_KEEPALIVE",
                                                    "CNN_WORKER_CONNECTIONS")})
    assert checked["CNN_THREADS"] == int(env["CNN_THREADS"])
    return env


def k8s_validator(filename):
    """A strict JSON-schema validator for one kind of the packaged Kubernetes schemas."""
    pytest.importorskip("kubernetes_validate")
    import importlib.resources

    import jsonschema
    from kubernetes_validate.utils import all_versions
    from referencing import Registry, Resource
    version = [v for v in all_versions() if v.startswith(KUBERNETES_VERSION + ".")][-1]
    folder = (importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
              / f"v{version}-local-strict")
    schema = json.loads((folder / filename).read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(schema) @ (Resource.from_contents(definitions)
                                                 @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(validator, obj):
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)]


# ----------------------------------------------------------- kustomizations


@pytest.mark.parametrize("folder", [K8S, K8S / "kserve"], ids=["k8s", "kserve"])
def test_kustomization_lists_its_manifests_and_pins_the_image(folder):
    [kust] = load(folder / "kustomization.yaml")
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    assert set(kust) <= KUSTOMIZATION_FIELDS, set(kust) - KUSTOMIZATION_FIELDS
    listed = kust["resources"]
    for name in listed:
        assert (folder / name).is_file(), f"{folder.name}/kustomization.yaml: no {name}"
    # every manifest beside it is applied, except the helper pod the README applies by hand
    present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert present - set(listed) <= {"model-loader.yaml"}, present - set(listed)
    # `kubectl apply -k` on a cluster without KServe must work: KServe apart
    kinds = {doc["kind"] for name in listed for doc in load(folder / name)}
    assert (kinds & {"ServingRuntime", "InferenceService"} == set()) == (folder == K8S)
    [image] = kust["images"]
    assert image["name"] == "cnn-api" and image["newTag"] == package_version()


# ---------------------------------------------------------------- schemas


def test_every_kubernetes_manifest_follows_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate")
    checked = set()
    for (kind, name), (path, obj) in manifests().items():
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            continue
        try:
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{path.relative_to(ROOT)} {kind}/{name}: "
                        f"{'.'.join(map(str, e.path))}: {e.message}")
        checked.add(kind)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler",
            "PersistentVolumeClaim"} <= checked


def test_the_schema_check_has_teeth():
    kv = pytest.importorskip("kubernetes_validate")
    deployment = json.loads(json.dumps(one("Deployment", "cnn-api")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["pth"] = "/ready"       # misspelt field
    container["ports"][0]["containerPort"] = "8000"                 # string, not integer
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSION, strict=True)
    validator = k8s_validator("container-v1.json")
    errors = schema_errors(validator, container)
    assert any("pth" in e for e in errors) and any("containerPort" in e for e in errors), errors


# ------------------------------------------------------- Deployment & co.


@pytest.fixture(scope="module")
def deployment():
    return one("Deployment", "cnn-api")


@pytest.fixture(scope="module")
def api_container(deployment):
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_runs_the_compose_api_image(api_container):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert api_container["image"].split(":")[0] == compose["services"]["api"]["image"]
    assert "command" not in api_container and "args" not in api_container, \
        "the image's own command (cnn serve) runs"


def test_deployment_environment_is_the_services(api_container, monkeypatch):
    env = check_env(api_container, monkeypatch)
    assert env["CNN_MODEL_DIR"] == "/models"


def test_deployment_probes_ask_real_routes(api_container, probe_app):
    check_probes(api_container, probe_app)


def test_deployment_cpu_is_workers_times_threads(api_container):
    check_resources(api_container)


def test_deployment_selector_and_graceful_stop(deployment, monkeypatch):
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    assert selector and selector.items() <= labels.items(), (selector, labels)
    _, cfg = load_gunicorn_conf(monkeypatch)
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > cfg.graceful_timeout
    # rolling updates never drop below the serving pods
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployment_metrics_annotations_point_at_metrics(deployment, api_container, probe_app):
    notes = deployment["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == container_port(api_container, "http")
    assert probe_app(notes["prometheus.io/path"])[1] == 200


def test_deployment_mounts_models_read_only_and_state_writable(deployment, api_container):
    env = env_of(api_container)
    mounts = {m["mountPath"]: m for m in api_container["volumeMounts"]}
    models, state = mounts[env["CNN_MODEL_DIR"]], mounts[env["CNN_STATE_DIR"]]
    assert models.get("readOnly") is True, "pods only read the weights files"
    assert not state.get("readOnly"), "the repository state is written by the pods"
    assert not inside(env["CNN_STATE_DIR"], env["CNN_MODEL_DIR"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for mount in (models, state):
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        pvc = one("PersistentVolumeClaim", claim)
        assert {"ReadWriteMany", "ReadOnlyMany"} & set(pvc["spec"]["accessModes"]), \
            "pods on several nodes mount the volume"
    assert models["subPath"] != state["subPath"]
    # the pod's user owns what it writes (the image's cnn user, uid 10001)
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--uid {security['runAsUser']} " in dockerfile
    assert security["fsGroup"] == security["runAsUser"]


def test_model_loader_writes_the_folders_the_pods_mount(deployment, api_container):
    [loader] = load(K8S / "model-loader.yaml")
    assert loader["kind"] == "Pod"
    [container] = loader["spec"]["containers"]
    assert container["image"] == f"cnn-api:{package_version()}"
    [mount] = container["volumeMounts"]
    assert not mount.get("readOnly")
    [volume] = [v for v in loader["spec"]["volumes"] if v["name"] == mount["name"]]
    pod_volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claims = {pod_volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
              for m in api_container["volumeMounts"]}
    assert claims == {volume["persistentVolumeClaim"]["claimName"]}
    script = " ".join(container["command"])
    for m in api_container["volumeMounts"]:
        assert f"{mount['mountPath']}/{m['subPath']}" in script, \
            f"the loader does not make the {m['subPath']}/ folder"
    assert loader["spec"]["securityContext"]["runAsUser"] == \
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert loader["spec"]["activeDeadlineSeconds"] <= 3600, "the helper pod ends by itself"


def test_service_targets_the_container_port(deployment, api_container):
    service = one("Service", "cnn-api")
    selector = service["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items(), (selector, labels)
    [port] = service["spec"]["ports"]
    target = container_port(api_container, port["targetPort"])
    assert target == bind_port(env_of(api_container)["CNN_BIND"])


def test_autoscaler_targets_the_deployment(deployment):
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == \
        (deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    # a CPU utilisation target needs a CPU request to be a percentage of
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100


# ------------------------------------------------------------------ KServe


@pytest.fixture(scope="module")
def runtime():
    return one("ServingRuntime", "cnn-runtime")


@pytest.fixture(scope="module")
def kserve_container(runtime):
    [container] = runtime["spec"]["containers"]
    return container


def test_serving_runtime_fields_are_kserves(runtime, kserve_container):
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert set(spec) <= SERVING_RUNTIME_SPEC, set(spec) - SERVING_RUNTIME_SPEC
    assert spec["protocolVersions"] == ["v2"], "the service speaks V2 (Open Inference Protocol)"
    assert set(spec["protocolVersions"]) <= PROTOCOL_VERSIONS
    assert spec.get("multiModel", False) is False
    for fmt in spec["supportedModelFormats"]:
        assert set(fmt) <= MODEL_FORMAT_FIELDS and "name" in fmt, fmt
        assert isinstance(fmt.get("version", ""), str), "versions are strings"
    # KServe finds the serving container by this name
    assert kserve_container["name"] == "kserve-container"
    validator = k8s_validator("container-v1.json")
    assert not schema_errors(validator, kserve_container)
    notes = spec["annotations"]
    assert int(notes["prometheus.kserve.io/port"]) == 8080
    assert notes["prometheus.kserve.io/path"] == "/metrics"


def test_serving_runtime_runs_cnn_serve_on_kserves_port(kserve_container, monkeypatch):
    assert kserve_container["image"].split(":")[0] == "cnn-api"
    args = kserve_container["args"]
    assert args[:2] == ["cnn", "serve"] and "command" not in kserve_container
    from cnn.serve import build_parser
    build_parser().parse_args(args[2:])          # flags cnn serve accepts
    env = check_env(kserve_container, monkeypatch)
    # KServe sends traffic to 8080 and puts the storageUri at /mnt/models
    assert bind_port(env["CNN_BIND"]) == 8080
    assert [p["containerPort"] for p in kserve_container["ports"]] == [8080]
    assert env["CNN_MODEL_DIR"] == "/mnt/models"
    assert not inside(env["CNN_STATE_DIR"], env["CNN_MODEL_DIR"]), "/mnt/models is read-only"
    check_resources(kserve_container)


def test_serving_runtime_probes_are_the_v2_health_routes(kserve_container, probe_app):
    check_probes(kserve_container, probe_app, ready_paths=("/v2/health/ready",),
                 live_paths=("/v2/health/live",))


def test_inference_service_uses_the_runtime_and_the_models_volume(runtime, api_container,
                                                                   deployment):
    isvc = one("InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert set(isvc["spec"]) <= INFERENCE_SERVICE_SPEC
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR_FIELDS, set(predictor) - PREDICTOR_FIELDS
    model = predictor["model"]
    container_part = {k: v for k, v in model.items() if k not in MODEL_EXTRA_FIELDS}
    assert not schema_errors(k8s_validator("container-v1.json"),
                             dict(container_part, name="kserve-container"))
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert set(model["modelFormat"]) <= {"name", "version"}
    # pvc://CLAIM/PATH: the same claim and folder the Deployment serves
    m = re.fullmatch(r"pvc://([^/]+)/(.+)", model["storageUri"])
    assert m, model["storageUri"]
    env = env_of(api_container)
    [models_mount] = [v for v in api_container["volumeMounts"]
                      if v["mountPath"] == env["CNN_MODEL_DIR"]]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[models_mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert (m.group(1), m.group(2).strip("/")) == (claim, models_mount["subPath"])
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
