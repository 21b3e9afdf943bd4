//! The deployment files, checked offline (no Docker engine or cluster runs
//! here): they parse, the Bouncer configuration and routes inside them
//! validate, and names, labels, ports and files they refer to exist.

use std::{collections::BTreeSet, path::PathBuf};

use bouncer_core::{config::Config, routes::RouteTable};
use serde_yaml::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn yaml(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A Bouncer config and routes as shipped must validate, and every upstream
/// host must be one the deployment defines.
fn check_bouncer_files(config: &str, routes: &str, what: &str, hosts: &BTreeSet<String>) -> Config {
    let config = Config::from_yaml(config, what).unwrap_or_else(|e| panic!("{what}: bouncer.yaml: {e}"));
    let table = RouteTable::from_yaml(routes, what).unwrap_or_else(|e| panic!("{what}: routes.yaml: {e}"));
    for (name, upstream) in &table.upstreams {
        for target in &upstream.targets {
            let host = target.rsplit_once(':').map(|(h, _)| h).unwrap_or(target);
            assert!(
                hosts.contains(host),
                "{what}: upstream {name} targets {host}, which the deployment does not define"
            );
        }
    }
    config
}

#[test]
fn the_compose_stack_is_consistent() {
    let compose = &yaml(&read("compose.yaml"), "compose.yaml")[0];
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect();
    for needed in ["postgres", "redis", "admin", "gateway-1", "gateway-2", "echo"] {
        assert!(names.contains(needed), "compose.yaml lacks the {needed} service");
    }
    let config = check_bouncer_files(
        &read("compose/bouncer.yaml"),
        &read("compose/routes.yaml"),
        "deploy/compose",
        &names,
    );
    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(service.get("healthcheck").is_some(), "service {name} has no healthcheck");
        for dependency in service.get("depends_on").and_then(Value::as_mapping).into_iter().flatten() {
            let dep = dependency.0.as_str().unwrap();
            assert!(names.contains(dep), "{name} depends on unknown {dep}");
        }
        let command = strings(service.get("command"));
        let expected = match name {
            "admin" => Some("admin"),
            "gateway-1" | "gateway-2" => Some("gateway"),
            "echo" => Some("echo"),
            _ => None,
        };
        if let Some(sub) = expected {
            assert_eq!(command.first().map(String::as_str), Some(sub), "{name} runs `bouncer {sub}`");
            // The same arguments parse with the real CLI (`--help` stops before running).
            let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
            args.push("--help");
            let out = std::process::Command::new(crate::harness::BIN).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "{name}: `bouncer {}` does not parse: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Gateways publish the ports their configuration listens on.
    let (listen, metrics) = (config.gateway.listen.port(), config.gateway.metrics_listen.port());
    for gateway in ["gateway-1", "gateway-2"] {
        let ports = strings(at(compose, &["services", gateway, "ports"]));
        assert!(ports.iter().any(|p| p.ends_with(&format!(":{listen}"))), "{gateway} publishes {ports:?}");
        assert!(ports.iter().any(|p| p.ends_with(&format!(":{metrics}"))), "{gateway} publishes {ports:?}");
        let health = strings(at(compose, &["services", gateway, "healthcheck", "test"])).join(" ");
        assert!(health.contains(&format!(":{metrics}/readyz")), "{gateway} health: {health}");
    }
    // Files the stack mounts or builds from exist.
    let anchors = compose.get("x-bouncer").expect("the shared bouncer service block");
    for volume in strings(anchors.get("volumes")) {
        let source = volume.split(':').next().unwrap();
        assert!(deploy(source).exists(), "compose mounts {source}, which does not exist");
    }
    assert_eq!(str_at(anchors, &["build", "dockerfile"]), Some("deploy/Dockerfile"));
    assert!(deploy("Dockerfile").exists());
}

#[test]
fn the_dockerfile_builds_what_exists_and_exposes_the_default_ports() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.matches("\nFROM ").count() >= 2, "a multi-stage build");
    assert!(dockerfile.contains("cmake"), "pingora needs cmake to build");
    assert!(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config").is_dir(), "COPY config/");
    let defaults = Config::default();
    for port in
        [defaults.gateway.listen.port(), defaults.admin.listen.port(), defaults.gateway.metrics_listen.port()]
    {
        assert!(dockerfile.contains(&port.to_string()), "EXPOSE {port}");
    }
}

#[test]
fn the_kubernetes_manifests_agree_on_names_labels_and_ports() {
    let mut docs = Vec::new();
    for file in ["config.yaml", "secret.yaml", "admin.yaml", "gateway.yaml"] {
        docs.extend(yaml(&read(&format!("kubernetes/{file}")), file));
    }
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"].as_str() == Some(kind));
    let name = |d: &Value| d["metadata"]["name"].as_str().unwrap().to_owned();
    let config_map = of_kind("ConfigMap").next().expect("a ConfigMap");
    let secret = of_kind("Secret").next().expect("a Secret");
    let services: BTreeSet<String> = of_kind("Service").map(name).collect();
    let mut hosts = services.clone();
    hosts.insert("my-api".into()); // the operator's own service, named in routes.yaml
    let config = check_bouncer_files(
        config_map["data"]["bouncer.yaml"].as_str().unwrap(),
        config_map["data"]["routes.yaml"].as_str().unwrap(),
        "kubernetes ConfigMap",
        &hosts,
    );
    assert_eq!(
        config.gateway.routes,
        PathBuf::from("/etc/bouncer/routes.yaml"),
        "where the ConfigMap is mounted"
    );

    let deployments: Vec<&Value> = of_kind("Deployment").collect();
    assert_eq!(deployments.len(), 2, "admin and gateway");
    for d in &deployments {
        let dname = name(d);
        let selector = d["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
        let labels = d["spec"]["template"]["metadata"]["labels"].as_mapping().unwrap();
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "{dname}: selector {k:?} is not a template label");
        }
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        let ports: BTreeSet<String> = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        for probe in ["readinessProbe", "livenessProbe"] {
            let port =
                str_at(container, &[probe, "httpGet", "port"]).unwrap_or_else(|| panic!("{dname}: {probe}"));
            assert!(ports.contains(port), "{dname}: {probe} uses port {port}, not one of {ports:?}");
        }
        for env in container["env"].as_sequence().unwrap() {
            let reference = &env["valueFrom"]["secretKeyRef"];
            assert_eq!(reference["name"].as_str(), Some(name(secret).as_str()), "{dname}: secret name");
            let key = reference["key"].as_str().unwrap();
            assert!(secret["stringData"].get(key).is_some(), "{dname}: secret key {key} missing");
        }
        for volume in d["spec"]["template"]["spec"]["volumes"].as_sequence().unwrap() {
            if let Some(cm) = str_at(volume, &["configMap", "name"]) {
                assert_eq!(cm, name(config_map), "{dname}: configMap volume");
            }
        }
        let all_ports: Vec<u64> = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = if dname.ends_with("gateway") {
            let readiness = str_at(container, &["readinessProbe", "httpGet", "path"]);
            assert_eq!(readiness, Some("/readyz"), "gateway readiness waits for keys and revocations");
            vec![config.gateway.listen.port().into(), config.gateway.metrics_listen.port().into()]
        } else {
            vec![config.admin.listen.port().into()]
        };
        assert_eq!(all_ports, expected, "{dname}: container ports match bouncer.yaml");
    }
    // Services, the disruption budget and the autoscaler point at real pods.
    let template_labels = |d: &&Value| d["spec"]["template"]["metadata"]["labels"].clone();
    for s in of_kind("Service") {
        let selector = s["spec"]["selector"].as_mapping().unwrap();
        let target = deployments.iter().find(|d| {
            let labels = template_labels(d);
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        let target = target.unwrap_or_else(|| panic!("service {} selects no Deployment", name(s)));
        let container = &target["spec"]["template"]["spec"]["containers"][0];
        for port in s["spec"]["ports"].as_sequence().unwrap() {
            let wanted = port["targetPort"].as_str().unwrap();
            let exists =
                container["ports"].as_sequence().unwrap().iter().any(|p| p["name"].as_str() == Some(wanted));
            assert!(exists, "service {} targets port {wanted} that its pods lack", name(s));
        }
    }
    let gateway = deployments.iter().find(|d| name(d) == "bouncer-gateway").expect("bouncer-gateway");
    let pdb = of_kind("PodDisruptionBudget").next().expect("a PodDisruptionBudget");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], gateway["spec"]["selector"]["matchLabels"]);
    let hpa = of_kind("HorizontalPodAutoscaler").next().expect("an HPA");
    assert_eq!(str_at(hpa, &["spec", "scaleTargetRef", "name"]), Some("bouncer-gateway"));
    assert!(services.contains("bouncer-admin"), "the gateway's jwks_url names the admin Service");
    assert!(config.gateway.jwks_url.starts_with("http://bouncer-admin:"), "{}", config.gateway.jwks_url);
}

#[test]
fn the_systemd_units_are_hardened_and_check_routes_first() {
    for unit in ["bouncer-admin.service", "bouncer-gateway.service"] {
        let text = read(&format!("systemd/{unit}"));
        for line in
            ["DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet="]
        {
            assert!(text.lines().any(|l| l == line), "{unit} lacks {line}");
        }
    }
    let gateway = read("systemd/bouncer-gateway.service");
    assert!(
        gateway.lines().any(|l| l.starts_with("ExecStartPre=") && l.contains("bouncer routes check")),
        "the gateway unit validates its route table before starting"
    );
}
