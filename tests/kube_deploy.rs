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
