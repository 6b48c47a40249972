//! The Kubernetes manifests of `examples/kubernetes/` checked against each other and against the
//! job binary they run (no cluster here to apply them to): the StatefulSet's pods find each
//! other through the headless Service under the names `--peers` expects, the replicas match
//! `--processes`, the pod ordinal becomes `--process-index`, credentials come from a Secret,
//! and every flag of the ConfigMap is one the job binary accepts.

mod common;

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn load(file: &str) -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{file}: one document");
    docs.remove(0)
}

fn str_at<'a>(y: &'a Yaml, path: &[&str]) -> &'a str {
    let mut at = y;
    for p in path {
        at = &at[*p];
    }
    at.as_str().unwrap_or_else(|| panic!("no string at {path:?}"))
}

/// The container's environment: name → the YAML of its value or source.
fn env_of(container: &Yaml) -> Vec<(String, Yaml)> {
    container["env"]
        .as_vec()
        .expect("an env list")
        .iter()
        .map(|e| (e["name"].as_str().expect("env name").to_string(), e.clone()))
        .collect()
}

#[test]
fn the_manifests_fit_together_and_the_job_accepts_their_flags() {
    let (sts, svc, cm) = (load("statefulset.yaml"), load("service.yaml"), load("configmap.yaml"));
    assert_eq!(str_at(&sts, &["kind"]), "StatefulSet");
    assert_eq!(str_at(&svc, &["kind"]), "Service");
    assert_eq!(str_at(&cm, &["kind"]), "ConfigMap");

    // Pod names come from the StatefulSet, DNS names from the headless Service it names.
    let (name, service) = (str_at(&sts, &["metadata", "name"]), str_at(&svc, &["metadata", "name"]));
    assert_eq!(str_at(&sts, &["spec", "serviceName"]), service);
    assert_eq!(str_at(&svc, &["spec", "clusterIP"]), "None", "a headless Service");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"].as_bool(), Some(true), "peers resolve while starting");
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_hash().expect("a selector") {
        assert_eq!(labels[k.as_str().unwrap()].as_str(), v.as_str(), "the Service selects the pods");
    }
    assert_eq!(str_at(&sts, &["spec", "podManagementPolicy"]), "Parallel", "all processes start together");

    // The peers pattern names every pod through the Service, on the data port.
    let data = &cm["data"];
    let processes: i64 = str_at(data, &["WEIR_PROCESSES"]).parse().expect("a number of processes");
    assert_eq!(sts["spec"]["replicas"].as_i64(), Some(processes), "one pod per process");
    let peers = str_at(data, &["WEIR_PEERS"]);
    assert_eq!(peers, format!("{name}-{{i}}.{service}:7070"));
    let ports: Vec<i64> = svc["spec"]["ports"].as_vec().unwrap().iter().filter_map(|p| p["port"].as_i64()).collect();
    assert!(ports.contains(&7070), "the Service exposes the data port");

    // The container gets its identity and credentials from the right places.
    let containers = sts["spec"]["template"]["spec"]["containers"].as_vec().expect("containers");
    let env = env_of(&containers[0]);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(
        str_at(&get("WEIR_PROCESS_INDEX"), &["valueFrom", "fieldRef", "fieldPath"]),
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    for (var, key) in [("WEIR_PROCESSES", "WEIR_PROCESSES"), ("WEIR_PEERS", "WEIR_PEERS"), ("FLAGS", "flags")] {
        let from = &get(var)["valueFrom"]["configMapKeyRef"];
        assert_eq!((str_at(from, &["name"]), str_at(from, &["key"])), (str_at(&cm, &["metadata", "name"]), key));
    }
    assert_eq!(str_at(&get("WEIR_LISTEN"), &["value"]), "0.0.0.0:7070");
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(get(var)["valueFrom"]["secretKeyRef"]["name"].as_str().is_some(), "{var} from a Secret");
    }
    let secret = load("secret.example.yaml");
    assert_eq!(str_at(&secret, &["kind"]), "Secret");
    let state_mount = containers[0]["volumeMounts"].as_vec().unwrap()[0]["mountPath"].as_str().unwrap();

    // Every flag the pods pass parses for the job binary, which also reads the WEIR_* variables:
    // `--help` after the flags parses them first and fails on any it does not know.
    let flags: Vec<&str> = str_at(data, &["flags"]).split_whitespace().collect();
    assert!(flags.windows(2).any(|w| w == ["--state-dir", state_mount]), "state goes to the mounted volume");
    assert!(flags.windows(2).any(|w| w[0] == "--checkpoint-dir" && w[1].starts_with("s3://")), "checkpoints on S3");
    let command: Vec<&str> = containers[0]["command"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert!(command.last().unwrap().contains("/auction_windows $(FLAGS)"), "{command:?}");
    let out = std::process::Command::new(common::example("auction_windows"))
        .args(&flags)
        .arg("--help")
        .env("WEIR_PROCESSES", processes.to_string())
        .env("WEIR_PROCESS_INDEX", "2")
        .env("WEIR_PEERS", peers)
        .env("WEIR_LISTEN", "0.0.0.0:7070")
        .output()
        .unwrap();
    assert!(out.status.success(), "the job refuses its flags: {}", String::from_utf8_lossy(&out.stderr));
    // And a flag it does not know is refused, so the check above can fail.
    let bad =
        std::process::Command::new(common::example("auction_windows")).args(["--no-such-flag", "--help"]).output();
    assert!(!bad.unwrap().status.success());
}
