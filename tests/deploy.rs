//! Deployment files, checked with the real tools that run here: promtool and amtool for the
//! Prometheus and Alertmanager configuration, the compose-spec JSON schema for the compose
//! file (check-jsonschema), Kubernetes' OpenAPI schemas for the manifests
//! (kubernetes-validate), hadolint for the Dockerfile, yamllint for every YAML file, and the
//! ecom-pulse binary itself for the configuration each of them passes it. Docker and a
//! Kubernetes cluster cannot run on these machines; docs/deployment.md says so.

mod common;

use std::path::Path;
use std::process::Command;

use common::tool;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

fn pip_tool(name: &str) -> std::path::PathBuf {
    tool(name, &format!("python3 -m pip install {name}"))
}

/// Runs a Python snippet with `yaml` loaded; `ROOT` is the repository.
fn python(code: &str) -> String {
    let prelude = format!(
        "import json, sys, yaml\nROOT = {ROOT:?}\ndef load(p):\n    return list(yaml.safe_load_all(open(ROOT + '/' + p)))\n"
    );
    run(Path::new("python3"), &["-c", &(prelude + code)])
}

#[test]
fn prometheus_and_alertmanager_configs_pass_their_own_checkers() {
    let text = run(
        &tool("promtool", "apt-get install prometheus"),
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    assert!(text.contains("SUCCESS: 55 rules found"), "{text}");
    run(
        &tool("amtool", "apt-get install prometheus-alertmanager"),
        &["check-config", "deploy/alertmanager/alertmanager.yml"],
    );
}

#[test]
fn the_compose_file_matches_the_compose_spec_and_configures_a_valid_service() {
    run(
        &pip_tool("check-jsonschema"),
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/docker-compose.yml",
        ],
    );
    // The environment given to ecom-pulse is a valid configuration: load it with the binary.
    let env = python(
        "c = load('deploy/docker-compose.yml')[0]\n\
         svc = c['services']\n\
         assert set(svc) >= {'kafka', 'kafka-init', 'ecom-pulse', 'generator', 'prometheus', 'alertmanager', 'grafana'}, svc.keys()\n\
         assert svc['generator']['command'][:2] == ['generate', '--brokers']\n\
         assert 'KAFKA_PROCESS_ROLES' in svc['kafka']['environment']\n\
         mounts = ' '.join(svc['prometheus']['volumes'])\n\
         assert 'ecom-pulse.rules.yml' in mounts\n\
         g = ' '.join(svc['grafana']['volumes'])\n\
         assert './grafana/dashboards:/var/lib/grafana/dashboards' in g and './grafana/provisioning:/etc/grafana/provisioning' in g\n\
         print(json.dumps(svc['ecom-pulse']['environment']))",
    );
    let env: std::collections::BTreeMap<String, String> = serde_json::from_str(env.trim()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .arg("rules")
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifests_validate_and_fit_together() {
    let text = run(
        &pip_tool("kubernetes-validate"),
        &[
            "deploy/k8s/namespace.yaml",
            "deploy/k8s/configmap.yaml",
            "deploy/k8s/deployment.yaml",
            "deploy/k8s/service.yaml",
            "deploy/k8s/pdb.yaml",
        ],
    );
    assert_eq!(text.matches(" passed ").count(), 5, "{text}");
    // What the schemas cannot say: the pieces refer to each other correctly, and the
    // ConfigMap holds a configuration ecom-pulse accepts.
    let config = python(
        "k = load('deploy/k8s/kustomization.yaml')[0]\n\
         import os\n\
         assert all(os.path.exists(ROOT + '/deploy/k8s/' + r) for r in k['resources']), k['resources']\n\
         d = load('deploy/k8s/deployment.yaml')[0]\n\
         spec = d['spec']; pod = spec['template']['spec']; c = pod['containers'][0]\n\
         assert spec['replicas'] == 3\n\
         assert c['image'] == k['images'][0]['name']\n\
         assert c['readinessProbe']['httpGet']['path'] == '/readyz' and c['livenessProbe']['httpGet']['path'] == '/healthz'\n\
         assert c['resources']['requests']['memory'] == '256Mi'\n\
         assert pod['securityContext']['runAsNonRoot'] and c['securityContext']['readOnlyRootFilesystem']\n\
         labels = spec['template']['metadata']['labels']\n\
         assert spec['selector']['matchLabels'].items() <= labels.items()\n\
         s = load('deploy/k8s/service.yaml')[0]\n\
         assert s['spec']['selector'].items() <= labels.items()\n\
         assert load('deploy/k8s/pdb.yaml')[0]['spec']['selector']['matchLabels'].items() <= labels.items()\n\
         m = load('deploy/k8s/servicemonitor.yaml')[0]\n\
         assert m['kind'] == 'ServiceMonitor' and m['spec']['selector']['matchLabels'].items() <= s['metadata']['labels'].items()\n\
         assert m['spec']['endpoints'][0]['port'] == s['spec']['ports'][0]['name']\n\
         r = load('deploy/k8s/prometheusrule.yaml')[0]\n\
         assert r['kind'] == 'PrometheusRule' and len(r['spec']['groups']) == 4\n\
         cm = load('deploy/k8s/configmap.yaml')[0]\n\
         assert c['args'][:2] == ['--config', '/etc/ecom-pulse/config.toml']\n\
         sys.stdout.write(cm['data']['config.toml'])",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .arg("--config")
        .arg(&path)
        .arg("rules")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's config.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grafana_provisioning_points_at_the_dashboard() {
    python(
        "ds = load('deploy/grafana/provisioning/datasources/prometheus.yml')[0]['datasources'][0]\n\
         assert ds['type'] == 'prometheus' and ds['uid'] == 'prometheus' and ds['isDefault']\n\
         p = load('deploy/grafana/provisioning/dashboards/ecom-pulse.yml')[0]['providers'][0]\n\
         assert p['type'] == 'file' and p['options']['path'] == '/var/lib/grafana/dashboards'\n\
         d = json.load(open(ROOT + '/deploy/grafana/dashboards/ecom-pulse.json'))\n\
         assert d['templating']['list'][0]['type'] == 'datasource' and d['templating']['list'][0]['query'] == 'prometheus'",
    );
}

#[test]
fn dockerfile_and_yaml_lint_clean() {
    run(&pip_tool("hadolint"), &["Dockerfile"]);
    run(
        &pip_tool("yamllint"),
        &[
            "-d",
            "{extends: relaxed, rules: {line-length: disable}}",
            "deploy/",
        ],
    );
}
