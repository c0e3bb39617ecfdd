//! The shadowgate configs shipped in `deploy/kubernetes/` (ConfigMap and
//! Secret files, passed as `--config` in the order the containers give)
//! load and route as documented.

use std::path::Path;

use serde::Deserialize;
use serde_norway::Value;
use shadowgate::config::load::load_texts;
use shadowgate::config::Config;

/// Every `kind: X` document of a kustomize directory.
fn objects(dir: &str) -> Vec<Value> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&base)
        .expect("deploy directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).expect("manifest");
        for de in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(de).expect("YAML");
            if v.get("kind").is_some() {
                out.push(v);
            }
        }
    }
    out
}

/// Loads the files the shadowgate container is started with: each
/// `--config=/mount/key` is looked up in the ConfigMap or Secret mounted there.
fn load(dir: &str) -> Config {
    let objs = objects(dir);
    let kind = |k: &'static str| {
        objs.iter()
            .filter(move |o| o.get("kind").and_then(Value::as_str) == Some(k))
    };
    let deployment = kind("Deployment")
        .find(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == "shadowgate"))
        })
        .expect("a deployment with shadowgate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "shadowgate"))
        .expect("shadowgate container");
    let mut files = Vec::new();
    for arg in container["args"].as_sequence().expect("args") {
        let Some(path) = arg.as_str().and_then(|a| a.strip_prefix("--config=")) else {
            continue;
        };
        let (dir_path, key) = path.rsplit_once('/').expect("file in a mount");
        let mount = container["volumeMounts"]
            .as_sequence()
            .and_then(|ms| ms.iter().find(|m| m["mountPath"] == dir_path))
            .expect("mounted");
        let volume = pod["volumes"]
            .as_sequence()
            .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
            .expect("volume");
        let text = if let Some(name) = volume["configMap"]["name"].as_str() {
            let cm = kind("ConfigMap")
                .find(|c| c["metadata"]["name"] == name)
                .expect("configmap");
            cm["data"][key].as_str().expect("key").to_string()
        } else {
            let name = volume["secret"]["secretName"].as_str().expect("secret");
            let s = kind("Secret")
                .find(|c| c["metadata"]["name"] == name)
                .expect("secret");
            s["stringData"][key].as_str().expect("key").to_string()
        };
        files.push((path.to_string(), text));
    }
    assert!(files.len() >= 3, "{files:?}");
    match load_texts(&files) {
        Ok(c) => c,
        Err(e) => panic!("{dir}: {e}"),
    }
}

fn summary(c: &Config) -> Vec<String> {
    c.routes
        .iter()
        .map(|r| {
            let mirrors: Vec<String> = r
                .mirrors
                .iter()
                .map(|m| {
                    let eps: Vec<&str> = c.backends[&m.backend]
                        .endpoints
                        .iter()
                        .map(|e| e.authority.as_str())
                        .collect();
                    format!("{}%→{}", m.percent, eps.join(","))
                })
                .collect();
            let eps: Vec<&str> = c.backends[&r.backend]
                .endpoints
                .iter()
                .map(|e| e.authority.as_str())
                .collect();
            format!("{} {} mirror {}", r.name, eps.join(","), mirrors.join(" "))
        })
        .collect()
}

#[test]
fn gateway_config_loads() {
    let c = load("deploy/kubernetes/gateway");
    assert_eq!(c.admin.to_string(), "0.0.0.0:9901");
    assert!(c.admin_token.is_some());
    assert_eq!(c.listeners[0].address.to_string(), "0.0.0.0:8080");
    let s = summary(&c);
    assert_eq!(s.len(), 4);
    assert_eq!(
        s[0],
        "httpbin-0-0-0 httpbin-v1.default.svc.cluster.local:8000 mirror 100%→httpbin-v2.default.svc.cluster.local:8000"
    );
}

#[test]
fn fleet_config_loads_with_the_store_url_from_its_secret() {
    let c = load("deploy/kubernetes/fleet");
    assert!(
        matches!(&c.store, shadowgate::config::StoreLocation::Postgres(url) if url.starts_with("postgres://")),
        "{:?}",
        c.store
    );
    assert!(c.admin_token.is_some());
    assert_eq!(summary(&c), summary(&load("deploy/kubernetes/gateway")));
    let objs = objects("deploy/kubernetes/fleet");
    let deployment = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
}

#[test]
fn sidecar_config_loads() {
    let c = load("deploy/kubernetes/sidecar");
    assert_eq!(c.listeners[0].address.to_string(), "0.0.0.0:15000");
    let s = summary(&c);
    assert_eq!(s.len(), 4);
    assert_eq!(
        s[0],
        "sa-logic-0-0-0 127.0.0.1:5000 mirror 100%→sa-logic-buggy.default.svc.cluster.local:80"
    );
}

/// The shadowgate container and its pod spec in a kustomize directory.
fn shadowgate_pod(objs: &[Value]) -> (&Value, &Value) {
    let deployment = objs
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .find(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == "shadowgate"))
        })
        .expect("a deployment with shadowgate");
    let container = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "shadowgate"))
        .expect("shadowgate container");
    (deployment, container)
}

/// The container port named `name`.
fn port_named(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_sequence()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("port {name}"))
}

/// Whether every `matchLabels` pair is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// Rolling updates: SIGTERM leaves `shutdown_delay` of serving while not
/// ready, then `shutdown_grace` of draining, both within the pod's
/// termination grace period (the kubelet kills the container after it).
#[test]
fn deploy_shutdown_delay_and_grace_fit_the_termination_grace_period() {
    for dir in ["deploy/kubernetes/gateway", "deploy/kubernetes/sidecar"] {
        let c = load(dir);
        assert!(
            c.shutdown_delay.as_secs() >= 5,
            "{dir}: {:?}",
            c.shutdown_delay
        );
        let objs = objects(dir);
        let (deployment, _) = shadowgate_pod(&objs);
        let period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            period > (c.shutdown_delay + c.shutdown_grace).as_secs(),
            "{dir}: {period}s ≤ {:?} + {:?}",
            c.shutdown_delay,
            c.shutdown_grace
        );
    }
}

/// Prometheus: the annotations, the container port, `metrics.listen`, and
/// the ServiceMonitor / PodMonitor (custom resources: no schema in
/// kubernetes-validate, so checked here against what they select) agree.
#[test]
fn deploy_scrape_targets_point_at_the_metrics_listener() {
    for dir in ["deploy/kubernetes/gateway", "deploy/kubernetes/sidecar"] {
        let c = load(dir);
        let listen = c.metrics_listen.expect("metrics.listen set");
        let objs = objects(dir);
        let (deployment, container) = shadowgate_pod(&objs);
        let template = &deployment["spec"]["template"];
        let port = port_named(container, "metrics");
        assert_eq!(u64::from(listen.port()), port, "{dir}");
        let ann = &template["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/scrape"], "true", "{dir}");
        assert_eq!(
            ann["prometheus.io/port"],
            port.to_string().as_str(),
            "{dir}"
        );
        assert_eq!(ann["prometheus.io/path"], "/metrics", "{dir}");
    }
    let objs = objects("deploy/kubernetes/gateway");
    let (deployment, _) = shadowgate_pod(&objs);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let kind = |k: &str| -> Vec<&Value> { objs.iter().filter(|o| o["kind"] == k).collect() };
    let pod_monitor = kind("PodMonitor");
    assert_eq!(pod_monitor.len(), 1);
    assert_eq!(pod_monitor[0]["apiVersion"], "monitoring.coreos.com/v1");
    assert!(selects(&pod_monitor[0]["spec"]["selector"], pod_labels));
    assert_eq!(
        pod_monitor[0]["spec"]["podMetricsEndpoints"][0]["port"],
        "metrics"
    );
    let service_monitor = kind("ServiceMonitor");
    assert_eq!(service_monitor.len(), 1);
    assert_eq!(service_monitor[0]["apiVersion"], "monitoring.coreos.com/v1");
    let services: Vec<&Value> = kind("Service")
        .into_iter()
        .filter(|s| {
            selects(
                &service_monitor[0]["spec"]["selector"],
                &s["metadata"]["labels"],
            )
        })
        .collect();
    assert_eq!(services.len(), 1, "one Service for the ServiceMonitor");
    let svc = services[0];
    assert!(svc["spec"]["selector"]
        .as_mapping()
        .expect("selector")
        .iter()
        .all(|(k, v)| pod_labels.get(k) == Some(v)));
    let endpoint_port = &service_monitor[0]["spec"]["endpoints"][0]["port"];
    let svc_port = svc["spec"]["ports"]
        .as_sequence()
        .and_then(|ps| ps.iter().find(|p| &p["name"] == endpoint_port))
        .expect("the ServiceMonitor's port is a port of the Service");
    assert_eq!(svc_port["targetPort"], "metrics");
}

/// The gateway variant survives voluntary disruptions and node loss: a
/// PodDisruptionBudget and anti-affinity over its pods, and the manifests
/// kustomize applies include the budget.
#[test]
fn gateway_has_a_disruption_budget_and_anti_affinity() {
    let objs = objects("deploy/kubernetes/gateway");
    let (deployment, _) = shadowgate_pod(&objs);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pdb = objs
        .iter()
        .find(|o| o["kind"] == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"], pod_labels));
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(min >= 1 && min < replicas, "{min} of {replicas}");
    let anti = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert!(selects(&anti["labelSelector"], pod_labels));
    let kustomization = objs
        .iter()
        .find(|o| o["kind"] == "Kustomization")
        .expect("kustomization");
    let resources = kustomization["resources"].as_sequence().expect("resources");
    assert!(resources.iter().any(|r| r == "pdb.yaml"));
}

/// Memory: the shadow budget plus the proxy's own baseline (≤ 64 MiB:
/// docs/benchmarks.md measures 13–32 MiB idle and 35 MiB under plain load)
/// fit the container's memory limit; the store is on a writable emptyDir.
#[test]
fn deploy_memory_budget_fits_the_limit_and_the_store_is_writable() {
    const BASELINE: u64 = 64 << 20;
    for dir in ["deploy/kubernetes/gateway", "deploy/kubernetes/sidecar"] {
        let c = load(dir);
        let objs = objects(dir);
        let (deployment, container) = shadowgate_pod(&objs);
        let limit = container["resources"]["limits"]["memory"]
            .as_str()
            .and_then(|m| m.strip_suffix("Mi"))
            .and_then(|m| m.parse::<u64>().ok())
            .expect("memory limit in Mi")
            << 20;
        let budget = c.limits.shadow_memory as u64;
        assert!(
            budget + BASELINE <= limit,
            "{dir}: shadow_memory {budget} + {BASELINE} > {limit}"
        );
        let shadowgate::config::StoreLocation::File(store) = &c.store else {
            panic!("{dir}: the store is a file on the emptyDir")
        };
        let mount = container["volumeMounts"]
            .as_sequence()
            .and_then(|ms| {
                ms.iter().find(|m| {
                    m["mountPath"]
                        .as_str()
                        .is_some_and(|p| store.starts_with(p))
                })
            })
            .expect("the store's directory is mounted");
        assert!(mount["readOnly"] != true, "{dir}");
        let volume = deployment["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
            .expect("volume");
        assert!(volume.get("emptyDir").is_some(), "{dir}: {volume:?}");
    }
}
