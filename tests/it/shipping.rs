//! Shipping: the Dockerfile, `compose.yaml`, the Swarm stack file `compose.swarm.yaml` and the
//! Kubernetes manifests in `deploy/kubernetes/`, checked without a Docker engine.
//!
//! * the real Docker Compose binary's `config` and the Compose JSON schema
//!   (`tests/schemas/compose-spec.schema.json`) on both Compose files, and every file they name;
//! * the service names the observability configs address (collector, Jaeger, Prometheus) exist;
//! * hadolint on the Dockerfile; what its runtime stage copies is what the build stage makes; the
//!   build context holds every file Cargo needs (declared targets, embedded files), never secrets;
//! * kubernetes-validate (strict, Kubernetes [`KUBERNETES_VERSION`]) on the manifests, and the
//!   Indexed Job's sharding and Secret mount;
//! * the MCP gateway's entrypoint script (token from the secret file, one-variable transport
//!   switch) run with `sh` against a stand-in for the gateway binary;
//! * the Swarm replicas and the Job's pods run one by one with their environment: each answers
//!   its shard, and the shard reports merge as deploy/README.md and the merge Job do it;
//! * agentry run the way the `agent` service runs it: its environment, command, user, mounts
//!   and secrets taken from `docker compose config`, against the test peers. The binary is
//!   Cargo's test build (`CARGO_BIN_EXE_agentry`, a debug build), not the image's release build:
//!   building release inside the test is too slow; the image build itself needs Docker.
//!
//! The tools (tests/tools/requirements.txt) live in `.peers/venv`, installed by
//! `tests/peers/install.sh`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::ModelServer;
use parse_dockerfile::{Command as DockerCommand, Dockerfile, Instruction, RunInstruction, Source, Stage};
use serde_json::Value;

use crate::peers::{self, PythonMcpServer};

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.34.0";

/// Where agentry looks for secrets by default (`secrets.dir` in config/default.toml).
const SECRETS_DIR: &str = "/run/secrets";

/// The placeholder key that routes questions to the local model (`model.cloud.placeholder_keys`).
const PLACEHOLDER_KEY: &str = "sk-test-dummy-key-for-learning";

fn root() -> PathBuf {
    peers::repo_root()
}

/// A tool from tests/tools/requirements.txt, in `.peers/venv/bin`.
fn tool(name: &str) -> PathBuf {
    peers::ensure_installed();
    let path = root().join(".peers/venv/bin").join(name);
    assert!(
        path.exists(),
        "{name} not found at {}: tests/peers/install.sh installs tests/tools/requirements.txt into .peers/venv",
        path.display()
    );
    path
}

/// Runs a command with a clean environment (PATH, a scratch HOME, `vars`) in the repository root.
fn run_tool(program: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().expect("scratch HOME");
    Command::new(program)
        .args(args)
        .current_dir(root())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every YAML document in `text`, as JSON (PyYAML from the venv: no YAML crate in the tests).
fn yaml_documents(text: &str) -> Vec<Value> {
    let mut child = Command::new(peers::python())
        .args(["-c", "import sys, json, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write YAML");
    let output = child.wait_with_output().expect("python output");
    assert!(output.status.success(), "YAML did not parse:\n{}\n{text}", describe(&output));
    let docs: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON from python");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn yaml_file(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    yaml_documents(&text)
}

/// `docker compose -f FILE config` (the real Compose binary, no engine), as JSON. The YAML form
/// is parsed because Compose's JSON form leaves out the top-level `models:`.
fn compose_config(file: &str, vars: &[(&str, &str)]) -> Value {
    let output = run_tool(&tool("docker-compose"), &["-f", file, "config"], vars);
    assert!(output.status.success(), "docker compose -f {file} config failed:\n{}", describe(&output));
    let mut docs = yaml_documents(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(docs.len(), 1, "one document");
    docs.remove(0)
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|env| env.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

/// `http://host:port/path` → (host, port, path without the leading slash).
fn split_url(url: &str) -> (String, u16, String) {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or_default();
    (host, port, parsed.path().trim_start_matches('/').to_owned())
}

/// An image reference is pinned when it names a version: a digest, or a tag other than
/// `latest` with a version number in the tag or the name (`cc-debian12:nonroot`).
fn is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((name, tag)) => {
            tag != "latest" && (tag.chars().any(|c| c.is_ascii_digit()) || name.chars().any(|c| c.is_ascii_digit()))
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile, read with parse-dockerfile. What it means (WORKDIR, COPY destinations, the
// files a RUN makes) is worked out here, only as far as these tests need.

/// The Dockerfile's text, read once: the parsed form borrows it.
static DOCKERFILE: LazyLock<String> =
    LazyLock::new(|| std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile"));

fn dockerfile() -> Dockerfile<'static> {
    let dockerfile = parse_dockerfile::parse(&DOCKERFILE).unwrap_or_else(|e| panic!("Dockerfile: {e}"));
    assert!(dockerfile.stages().len() >= 2, "the Dockerfile is multi-stage");
    dockerfile
}

/// The stage the image runs: the last one.
fn runtime_stage<'b>(dockerfile: &'b Dockerfile<'static>) -> Stage<'static, 'b> {
    dockerfile.stages().last().expect("a stage")
}

/// Each instruction of `stage` with the WORKDIR in force for it.
fn with_workdir<'b>(stage: &Stage<'static, 'b>) -> Vec<(PathBuf, &'b Instruction<'static>)> {
    let mut dir = PathBuf::from("/");
    let mut out = Vec::new();
    for instruction in stage.instructions {
        if let Instruction::Workdir(workdir) = instruction {
            dir = dir.join(&*workdir.arguments.value);
        }
        out.push((dir.clone(), instruction));
    }
    out
}

fn final_workdir(stage: &Stage<'static, '_>) -> PathBuf {
    with_workdir(stage).pop().map_or_else(|| PathBuf::from("/"), |(dir, _)| dir)
}

/// A COPY, with its sources as written and where each lands in the stage's filesystem.
#[derive(Debug)]
struct CopyStep {
    /// `--from=STAGE`; `None` copies from the build context.
    from: Option<String>,
    /// (source, where it lands).
    files: Vec<(String, PathBuf)>,
}

fn copies(stage: &Stage<'static, '_>) -> Vec<CopyStep> {
    let mut out = Vec::new();
    for (dir, instruction) in with_workdir(stage) {
        let Instruction::Copy(copy) = instruction else { continue };
        let from = copy.options.iter().find(|flag| flag.name.value == "from");
        let sources: Vec<&str> = copy
            .src
            .iter()
            .map(|source| match source {
                Source::Path(path) => path.value.as_ref(),
                _ => panic!("COPY with a here-document: {copy:?}"),
            })
            .collect();
        let dest = dir.join(&*copy.dest.value);
        // Into a directory (a trailing slash, or several sources): each lands under its own name.
        let into_dir = copy.dest.value.ends_with('/') || sources.len() > 1;
        let files = sources
            .iter()
            .map(|source| {
                let name = Path::new(source).file_name().expect("a source names a file");
                (source.to_string(), if into_dir { dest.join(name) } else { dest.clone() })
            })
            .collect();
        out.push(CopyStep { from: from.and_then(|flag| flag.value.as_ref()).map(|v| v.value.to_string()), files });
    }
    out
}

/// The commands of a RUN, split at `&&`, as words.
fn run_commands(run: &RunInstruction<'_>) -> Vec<Vec<String>> {
    let text = match &run.arguments {
        DockerCommand::Shell(shell) => shell.value.replace("\\\n", " "),
        DockerCommand::Exec(exec) => exec.value.iter().map(|word| word.value.as_ref()).collect::<Vec<_>>().join(" "),
        _ => panic!("an unknown RUN form: {run:?}"),
    };
    text.split("&&").map(|command| command.split_whitespace().map(str::to_owned).collect()).collect()
}

/// What a stage holds for a later stage to copy: what it copies in from the build context,
/// what its RUNs make with `mkdir -p`, and `target/release/BIN` where it runs
/// `cargo build --release --bin BIN` (no `--target`, no `CARGO_TARGET_DIR`: Cargo's default
/// layout).
fn made_by(stage: &Stage<'static, '_>) -> Vec<PathBuf> {
    let target_moved = stage.instructions.iter().any(
        |instruction| matches!(instruction, Instruction::Env(env) if env.arguments.value.contains("CARGO_TARGET_DIR")),
    );
    let mut made: Vec<PathBuf> = copies(stage)
        .into_iter()
        .filter(|copy| copy.from.is_none())
        .flat_map(|copy| copy.files)
        .map(|(_, to)| to)
        .collect();
    for (dir, instruction) in with_workdir(stage) {
        let Instruction::Run(run) = instruction else { continue };
        for command in run_commands(run) {
            let words: Vec<&str> = command.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["mkdir", "-p", dirs @ ..] => made.extend(dirs.iter().map(|d| dir.join(d))),
                ["cargo", "build", flags @ ..] if flags.contains(&"--release") && !flags.contains(&"--target") => {
                    let bin = flags.windows(2).find(|pair| pair[0] == "--bin").map(|pair| pair[1]);
                    if let Some(bin) = bin.filter(|_| !target_moved) {
                        made.push(dir.join("target/release").join(bin));
                    }
                }
                _ => {}
            }
        }
    }
    made
}

/// The runtime user's numeric uid and gid (`USER 65532:65532`).
fn runtime_user() -> (u32, u32) {
    let dockerfile = dockerfile();
    let user = runtime_stage(&dockerfile)
        .instructions
        .iter()
        .rev()
        .find_map(|instruction| match instruction {
            Instruction::User(user) => Some(user.arguments.value.to_string()),
            _ => None,
        })
        .expect("the runtime stage sets USER");
    let (uid, gid) = user.split_once(':').unwrap_or((&user, &user));
    let uid: u32 = uid.parse().unwrap_or_else(|_| panic!("USER {user}: use a numeric uid"));
    let gid: u32 = gid.parse().unwrap_or_else(|_| panic!("USER {user}: use a numeric gid"));
    (uid, gid)
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let output = run_tool(&tool("hadolint"), &["--no-color", "Dockerfile"], &[]);
    assert!(output.status.success() && output.stdout.is_empty(), "hadolint Dockerfile:\n{}", describe(&output));
}

#[test]
fn the_dockerfile_pins_its_bases_runs_as_non_root_and_holds_no_secret() {
    let dockerfile = dockerfile();
    let args: BTreeMap<&str, &str> = dockerfile
        .global_args()
        .filter_map(|arg| arg.arguments.value.split_once('='))
        .map(|(name, value)| (name.trim(), value.trim().trim_matches('"')))
        .collect();
    for stage in dockerfile.stages() {
        let image = args.iter().fold(stage.from.image.value.to_string(), |image, (name, value)| {
            image.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value)
        });
        assert!(is_pinned(&image), "base image {image} is not pinned by version");
    }

    // The Rust in the build stage is at least Cargo.toml's rust-version.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml"))
            .expect("Cargo.toml parses");
    let msrv = manifest["package"]["rust-version"].as_str().expect("Cargo.toml has rust-version");
    let rust = args.get("RUST_VERSION").expect("ARG RUST_VERSION=<version> before the first FROM");
    let version = |v: &str| v.split('.').map(|n| n.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    assert!(version(rust) >= version(msrv), "the build stage's Rust {rust} is older than rust-version {msrv}");

    let (uid, _) = runtime_user();
    assert_ne!(uid, 0, "the runtime stage runs as a non-root user");

    // No secret in a build argument or a default environment, and no secret file copied in.
    let secretish = ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"];
    for instruction in &dockerfile.instructions {
        let declared = match instruction {
            Instruction::Arg(arg) => &arg.arguments.value,
            Instruction::Env(env) => &env.arguments.value,
            _ => continue,
        };
        let name = declared.split(['=', ' ']).next().unwrap_or_default().to_uppercase();
        assert!(!secretish.iter().any(|s| name.contains(s)), "the Dockerfile declares {name}");
    }
    for stage in dockerfile.stages() {
        for (source, _) in copies(&stage).into_iter().flat_map(|copy| copy.files) {
            assert!(!source.contains("secrets") && !source.contains(".env"), "COPY {source} copies secrets");
        }
        assert!(!stage.instructions.iter().any(|i| matches!(i, Instruction::Add(_))), "ADD: use COPY");
    }
}

#[test]
fn what_the_runtime_stage_copies_is_what_the_build_stage_makes() {
    let dockerfile = dockerfile();
    let runtime = runtime_stage(&dockerfile);
    let binary = Path::new(env!("CARGO_BIN_EXE_agentry")).file_name().expect("binary name");
    let mut copied_binary_to = None;
    let mut copied_config = false;
    for copy in copies(&runtime) {
        let from =
            copy.from.unwrap_or_else(|| panic!("the runtime stage copies {:?} from the build context", copy.files));
        let build = dockerfile.stage(&from).unwrap_or_else(|| panic!("COPY --from={from}: no such stage"));
        let made = made_by(&build);
        for (source, to) in copy.files {
            let source = Path::new(&source);
            assert!(
                made.iter().any(|m| source.starts_with(m)),
                "COPY --from={from} {}: the build stage neither copies it from the repository nor makes it; \
                 it holds {made:?}",
                source.display()
            );
            if source.ends_with(Path::new("target/release").join(binary)) {
                copied_binary_to = Some(to);
            } else {
                copied_config |= source.ends_with("config");
            }
        }
    }
    assert!(copied_config, "the runtime stage copies config/");
    let entrypoint = runtime.instructions.iter().rev().find_map(|instruction| match instruction {
        Instruction::Entrypoint(entrypoint) => Some(&entrypoint.arguments),
        _ => None,
    });
    let Some(DockerCommand::Exec(entrypoint)) = entrypoint else { panic!("an exec-form ENTRYPOINT: {entrypoint:?}") };
    let copied_binary_to = copied_binary_to.expect("the runtime stage copies the release binary");
    assert_eq!(Path::new(&*entrypoint.value[0].value), copied_binary_to, "ENTRYPOINT runs the copied binary");
}

#[test]
fn the_build_stage_copies_every_file_the_crate_embeds() {
    let dockerfile = dockerfile();
    let build = dockerfile.stage("build").expect("a stage named build");
    // What the build stage copies from the build context: in all, and before its first
    // `cargo build` (the dependency layer).
    let mut context: Vec<String> = Vec::new();
    let mut before_first_build: Option<Vec<String>> = None;
    for instruction in build.instructions {
        match instruction {
            Instruction::Copy(copy) if !copy.options.iter().any(|flag| flag.name.value == "from") => {
                for source in &copy.src {
                    let Source::Path(path) = source else { continue };
                    let source = path.value.trim_start_matches("./").trim_end_matches('/');
                    assert!(root().join(source).exists(), "COPY {source}: not in the repository");
                    context.push(source.to_owned());
                }
            }
            Instruction::Run(run)
                if run_commands(run).iter().any(|words| words.starts_with(&["cargo".into(), "build".into()])) =>
            {
                before_first_build.get_or_insert_with(|| context.clone());
            }
            _ => {}
        }
    }
    let before_first_build = before_first_build.expect("the build stage runs cargo build");
    let copied_before = |path: &str| before_first_build.iter().any(|c| Path::new(path).starts_with(c));

    // Cargo refuses a manifest whose declared targets or workspace members are missing, even for
    // `--bin agentry`: every one (its path, or the inferred one), and a build script, must be in
    // the build context before the first `cargo build`.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml"))
            .expect("Cargo.toml parses");
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    if let Some(build_script) = manifest["package"].get("build").and_then(|b| b.as_str()) {
        needed.push(build_script.to_owned());
    }
    if root().join("build.rs").exists() {
        needed.push("build.rs".to_owned());
    }
    for (section, dir) in [("example", "examples"), ("test", "tests"), ("bench", "benches")] {
        for target in manifest.get(section).and_then(|t| t.as_array()).into_iter().flatten() {
            let path = match target.get("path").and_then(|p| p.as_str()) {
                Some(path) => path.to_owned(),
                None => {
                    let name = target.get("name").and_then(|n| n.as_str()).expect("a named target");
                    let single = format!("{dir}/{name}.rs");
                    if root().join(&single).exists() { single } else { format!("{dir}/{name}/main.rs") }
                }
            };
            assert!(root().join(&path).exists(), "Cargo.toml declares [[{section}]] at {path}, which does not exist");
            needed.push(path);
        }
    }
    let members = manifest.get("workspace").and_then(|w| w.get("members")).and_then(|m| m.as_array());
    for member in members.into_iter().flatten() {
        let member = member.as_str().expect("a member path");
        assert!(!member.contains('*'), "workspace member {member}: name it without a glob");
        needed.push(member.to_owned());
    }
    for path in needed {
        assert!(
            copied_before(&path),
            "Cargo.toml needs {path}, which the Dockerfile's build stage does not copy before its first \
             cargo build (cargo refuses a manifest whose targets or workspace members are missing)"
        );
    }

    // include_str!/include_bytes! reach outside src/ (config/default.toml): those files too.
    let repo = root().canonicalize().expect("root");
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for path in std::fs::read_dir(&dir).expect("read src").filter_map(Result::ok).map(|e| e.path()) {
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source");
            for piece in ["include_str!(\"", "include_bytes!(\""].iter().flat_map(|m| text.split(m).skip(1)) {
                let literal = piece.split('"').next().unwrap_or_default();
                let target = path.parent().expect("dir").join(literal);
                let target = target.canonicalize().unwrap_or_else(|e| panic!("{}: {literal}: {e}", path.display()));
                let rel = target.strip_prefix(&repo).expect("inside the repo");
                assert!(
                    context.iter().any(|c| rel.starts_with(c)),
                    "{} embeds {}, which the Dockerfile's build stage does not copy",
                    path.display(),
                    rel.display()
                );
            }
        }
    }

    // .dockerignore lets exactly these in, and never secrets.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(lines.first(), Some(&"*"), ".dockerignore starts by ignoring everything");
    let allowed: Vec<&str> =
        lines.iter().filter_map(|l| l.strip_prefix('!')).map(|l| l.trim_end_matches('/')).collect();
    for source in &context {
        assert!(
            allowed.iter().any(|a| Path::new(source).starts_with(a)),
            ".dockerignore keeps {source} out of the build context"
        );
    }
    for never in ["secrets", ".env", "target", ".git", ".peers", "definitions"] {
        assert!(!allowed.iter().any(|a| a.starts_with(never)), ".dockerignore lets {never} in");
    }
}

// ---------------------------------------------------------------------------------------------
// The Compose files.

#[test]
fn both_compose_files_pass_compose_config_and_the_compose_schema() {
    for file in ["compose.yaml", "compose.swarm.yaml"] {
        let output = run_tool(&tool("docker-compose"), &["-f", file, "config", "--quiet"], &[]);
        assert!(output.status.success(), "docker compose -f {file} config:\n{}", describe(&output));
        if file == "compose.yaml" {
            assert!(output.stderr.is_empty(), "docker compose -f {file} config warns:\n{}", describe(&output));
        }
    }
    let output = run_tool(
        &tool("check-jsonschema"),
        &["--schemafile", "tests/schemas/compose-spec.schema.json", "compose.yaml", "compose.swarm.yaml"],
        &[],
    );
    assert!(output.status.success(), "check-jsonschema:\n{}", describe(&output));

    // The schema is the upstream file, unchanged: it must still describe the elements used.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/schemas/compose-spec.schema.json")).expect("schema"),
    )
    .expect("schema JSON");
    assert!(schema["properties"]["models"].is_object(), "the schema knows top-level models:");
}

#[test]
fn every_file_the_compose_files_name_exists() {
    for file in ["compose.yaml", "compose.swarm.yaml"] {
        let config = compose_config(file, &[]);
        let services = config["services"].as_object().expect("services");
        for (name, service) in services {
            if let Some(build) = service.get("build") {
                let context = PathBuf::from(str_of(&build["context"], "build.context"));
                assert!(
                    context.join(str_of(&build["dockerfile"], "dockerfile")).exists(),
                    "{file}: {name}: Dockerfile"
                );
            }
            for volume in service["volumes"].as_array().into_iter().flatten() {
                if volume["type"] != "bind" {
                    continue;
                }
                let source = PathBuf::from(str_of(&volume["source"], "volume source"));
                if !source.starts_with(root()) {
                    assert_eq!(
                        source,
                        Path::new("/var/run/docker.sock"),
                        "{file}: {name}: a host path outside the repo"
                    );
                    continue;
                }
                if source.ends_with("definitions") {
                    // The output directory: made by the user (deploy/README.md), never committed.
                    assert!(git_ignores(&source), "{file}: {}: the output directory is git-ignored", source.display());
                    continue;
                }
                assert!(source.exists(), "{file}: {name} mounts {}, which does not exist", source.display());
            }
        }
        for (name, config_entry) in config["configs"].as_object().into_iter().flatten() {
            let path = PathBuf::from(str_of(&config_entry["file"], "configs.file"));
            assert!(path.exists(), "{file}: config {name}: {} does not exist", path.display());
        }
        for (name, secret) in config["secrets"].as_object().into_iter().flatten() {
            if let Some(path) = secret["file"].as_str() {
                // Secret files are made by the user and kept out of git (and of the image).
                let path = PathBuf::from(path);
                assert!(path.starts_with(root().join("secrets")), "{file}: secret {name} lives in secrets/");
                assert!(git_ignores(&path), "{file}: secret {name}: {} is not git-ignored", path.display());
            } else {
                assert_eq!(secret["external"], true, "{file}: secret {name} is a file or external");
            }
        }
    }
}

fn git_ignores(path: &Path) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["check-ignore", "-q", "--no-index"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// The observability configs address services by name; those services must exist in both
/// Compose files, and Grafana must find the dashboards where its provisioning looks.
#[test]
fn the_observability_configs_address_services_that_exist() {
    let collector = &yaml_file("otel-collector.yaml")[0];
    let prometheus = &yaml_file("config/prometheus.yml")[0];
    let datasources = &yaml_file("config/grafana/provisioning/datasources/datasources.yaml")[0];
    let providers = &yaml_file("config/grafana/provisioning/dashboards/dashboards.yaml")[0];

    let mut hosts: Vec<(String, String)> = Vec::new();
    for (name, exporter) in collector["exporters"].as_object().into_iter().flatten() {
        if let Some(endpoint) = exporter["endpoint"].as_str() {
            let host = endpoint.split("://").last().unwrap_or(endpoint).split(':').next().unwrap_or_default();
            if host != "0.0.0.0" && host != "localhost" {
                hosts.push((format!("otel-collector.yaml exporter {name}"), host.to_owned()));
            }
        }
    }
    for job in prometheus["scrape_configs"].as_array().into_iter().flatten() {
        for target in job["static_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["targets"].as_array().into_iter().flatten())
        {
            let host = str_of(target, "target").split(':').next().unwrap_or_default();
            if host != "localhost" {
                hosts.push((format!("prometheus.yml job {}", job["job_name"]), host.to_owned()));
            }
        }
    }
    for source in datasources["datasources"].as_array().into_iter().flatten() {
        let (host, _, _) = split_url(str_of(&source["url"], "datasource url"));
        hosts.push((format!("datasource {}", source["name"]), host));
    }
    assert!(hosts.len() >= 3, "{hosts:?}");

    for file in ["compose.yaml", "compose.swarm.yaml"] {
        let config = compose_config(file, &[]);
        let services = config["services"].as_object().expect("services");
        for (what, host) in &hosts {
            assert!(services.contains_key(host), "{file}: {what} addresses {host}, which is not a service");
        }
        // agentry exports to the collector, which listens on 4317 (gRPC) and 4318 (HTTP).
        let agent_env = env_of(&config["services"]["agent"]);
        let (host, port, _) = split_url(&agent_env["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        assert_eq!(host, "otel-collector", "{file}");
        let protocol = agent_env.get("OTEL_EXPORTER_OTLP_PROTOCOL").map(String::as_str).unwrap_or("grpc");
        assert_eq!(port, if protocol == "grpc" { 4317 } else { 4318 }, "{file}: {protocol} port");
        let receivers = &collector["receivers"]["otlp"]["protocols"];
        let listen = if protocol == "grpc" { &receivers["grpc"]["endpoint"] } else { &receivers["http"]["endpoint"] };
        assert!(
            str_of(listen, "receiver endpoint").ends_with(&format!(":{port}")),
            "{file}: the collector listens on {port}"
        );

        // Grafana: the provider's path is where the dashboards are mounted.
        let grafana = &config["services"]["grafana"];
        for provider in providers["providers"].as_array().into_iter().flatten() {
            let path = str_of(&provider["options"]["path"], "provider path");
            let mounted = grafana["volumes"].as_array().into_iter().flatten().any(|v| {
                v["target"] == path && Path::new(str_of(&v["source"], "source")).join("agentry-overview.json").exists()
            }) || grafana["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| str_of(&c["target"], "config target").starts_with(&format!("{path}/")));
            assert!(mounted, "{file}: Grafana's dashboards are not at {path}");
        }
    }
    assert!(root().join("config/grafana/dashboards/agentry-overview.json").exists(), "the dashboard file");
}

#[test]
fn every_service_image_is_pinned_and_no_secret_is_a_variable() {
    for file in ["compose.yaml", "compose.swarm.yaml"] {
        let config = compose_config(file, &[]);
        for (name, service) in config["services"].as_object().expect("services") {
            for variable in env_of(service).keys() {
                let upper = variable.to_uppercase();
                assert!(
                    !["KEY", "TOKEN", "SECRET", "PASSWORD"].iter().any(|s| upper.contains(s)),
                    "{file}: {name}: {variable} would carry a secret in the environment; use a secret file"
                );
            }
            let image = service["image"].as_str().unwrap_or_default();
            if service.get("build").is_some() || image.starts_with("agentry:") {
                continue; // built from the Dockerfile here
            }
            assert!(is_pinned(image), "{file}: {name}: image {image:?} is not pinned by version");
        }
    }
}

#[test]
fn compose_wires_the_agent_to_its_secrets_model_gateway_and_collector() {
    let config = compose_config("compose.yaml", &[]);
    let agent = &config["services"]["agent"];
    assert_eq!(agent["read_only"], true, "the agent's root filesystem is read-only");
    assert!(agent.get("build").is_some(), "the agent is built from the Dockerfile");
    let user = str_of(&agent["user"], "user");
    assert!(!user.starts_with("0") && !user.starts_with("root"), "the agent runs as a non-root user: {user}");

    // Secrets: files, named as agentry looks for them.
    let targets: Vec<&str> =
        agent["secrets"].as_array().expect("secrets").iter().map(|s| str_of(&s["target"], "target")).collect();
    assert_eq!(targets, [format!("{SECRETS_DIR}/openai_api_key"), format!("{SECRETS_DIR}/mcp_gateway_auth_token")]);
    for (name, secret) in config["secrets"].as_object().expect("secrets") {
        assert!(secret.get("file").is_some(), "{name}: a file: source (external secrets work only in Swarm)");
    }

    // The local model through Compose models:.
    assert_eq!(agent["models"]["llm"]["endpoint_var"], "MODEL_RUNNER_URL");
    assert_eq!(agent["models"]["llm"]["model_var"], "MODEL_RUNNER_MODEL");
    assert!(str_of(&config["models"]["llm"]["model"], "model").starts_with("ai/"), "{}", config["models"]);

    // The gateway: pinned, DuckDuckGo's search only, a health check on /health, waited for.
    let gateway = &config["services"]["mcp-gateway"];
    assert!(str_of(&gateway["image"], "image").starts_with("docker/mcp-gateway:v"));
    let command: Vec<&str> = gateway["command"].as_array().expect("command").iter().map(|c| str_of(c, "arg")).collect();
    for arg in ["--port=8811", "--servers=duckduckgo", "--tools=search"] {
        assert!(command.contains(&arg), "gateway command {command:?} lacks {arg}");
    }
    let health: Vec<&str> =
        gateway["healthcheck"]["test"].as_array().expect("test").iter().map(|c| str_of(c, "arg")).collect();
    assert!(health.iter().any(|a| a.ends_with(":8811/health")), "{health:?}");
    assert_eq!(agent["depends_on"]["mcp-gateway"]["condition"], "service_healthy");
    assert!(gateway["secrets"].as_array().expect("secrets").iter().any(|s| s["source"] == "mcp_gateway_auth_token"));
}

#[test]
fn the_doctor_service_checks_what_the_agent_uses() {
    let config = compose_config("compose.yaml", &[("COMPOSE_PROFILES", "doctor")]);
    let (agent, doctor) = (&config["services"]["agent"], &config["services"]["doctor"]);
    assert_eq!(doctor["command"], serde_json::json!(["doctor"]), "{doctor}");
    // The agent's settings, secrets, model, mounts and user: what it checks is what a run uses.
    for key in ["image", "user", "read_only", "environment", "secrets", "models", "volumes"] {
        assert_eq!(doctor[key], agent[key], "doctor's {key} differs from the agent's");
    }
    // It reports a gateway that never gets healthy rather than waiting for it.
    assert_eq!(doctor["depends_on"]["mcp-gateway"]["condition"], "service_started");
    // Only `docker compose run --rm doctor` (or --profile doctor) starts it, never `up`.
    assert_eq!(doctor["profiles"], serde_json::json!(["doctor"]));
    let plain = compose_config("compose.yaml", &[]);
    assert!(plain["services"].get("doctor").is_none(), "doctor is not part of `docker compose up`");
}

/// The gateway's entrypoint script, as the container runs it (`$$` is Compose's `$`), against a
/// stand-in for /docker-mcp that prints what it was given.
fn run_gateway_entrypoint(gateway: &Value, token: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    std::fs::write(secrets.join("mcp_gateway_auth_token"), token).expect("token file");
    let stub = dir.path().join("docker-mcp");
    std::fs::write(&stub, "#!/bin/sh\nprintf 'arg=%s\\n' \"$@\"\nprintf 'token=%s\\n' \"$MCP_GATEWAY_AUTH_TOKEN\"\n")
        .expect("stub");
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let entrypoint: Vec<String> = gateway["entrypoint"]
        .as_array()
        .expect("entrypoint")
        .iter()
        .map(|a| str_of(a, "arg").replace("$$", "$"))
        .collect();
    assert_eq!(entrypoint[..2], ["/bin/sh", "-c"], "{entrypoint:?}");
    let script = entrypoint[2]
        .replace("/docker-mcp", &stub.display().to_string())
        .replace(&format!("{SECRETS_DIR}/"), &format!("{}/", secrets.display()));
    let command: Vec<String> =
        gateway["command"].as_array().expect("command").iter().map(|a| str_of(a, "arg").to_owned()).collect();
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .args(&entrypoint[3..])
        .args(&command)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env_of(gateway))
        .output()
        .expect("sh runs")
}

#[test]
fn one_variable_switches_gateway_and_agent_to_legacy_sse() {
    for file in ["compose.yaml", "compose.swarm.yaml"] {
        for (endpoint, transport) in [(None, "streaming"), (Some("sse"), "sse"), (Some("mcp"), "streaming")] {
            let vars: Vec<(&str, &str)> = endpoint.map(|e| ("MCP_ENDPOINT", e)).into_iter().collect();
            let config = compose_config(file, &vars);
            let gateway = &config["services"]["mcp-gateway"];
            let output = run_gateway_entrypoint(gateway, "gateway-token-1234");
            assert!(output.status.success(), "{file}: {}", describe(&output));
            let printed = String::from_utf8_lossy(&output.stdout);
            let args: Vec<&str> = printed.lines().filter_map(|l| l.strip_prefix("arg=")).collect();
            assert_eq!(args[..3], ["gateway", "run", &format!("--transport={transport}")], "{file}: {printed}");
            assert!(args.contains(&"--servers=duckduckgo") && args.contains(&"--port=8811"), "{file}: {printed}");
            assert!(printed.contains("token=gateway-token-1234"), "{file}: the token comes from the secret file");

            // The agent follows: the gateway serves /mcp for streaming and /sse for sse.
            let url = &env_of(&config["services"]["agent"])["MCP_SERVER_URL"];
            let (host, port, path) = split_url(url);
            assert_eq!((host.as_str(), port), ("mcp-gateway", 8811), "{file}: {url}");
            assert_eq!(path, if transport == "sse" { "sse" } else { "mcp" }, "{file}: {url}");
        }
        let config = compose_config(file, &[("MCP_ENDPOINT", "websocket")]);
        let output = run_gateway_entrypoint(&config["services"]["mcp-gateway"], "t");
        assert_eq!(
            output.status.code(),
            Some(2),
            "{file}: an unknown MCP_ENDPOINT stops the gateway: {}",
            describe(&output)
        );
    }
    // Both files start the gateway the same way.
    let compose = compose_config("compose.yaml", &[]);
    let swarm = compose_config("compose.swarm.yaml", &[]);
    assert_eq!(compose["services"]["mcp-gateway"]["entrypoint"], swarm["services"]["mcp-gateway"]["entrypoint"]);
    assert_eq!(compose["services"]["mcp-gateway"]["command"], swarm["services"]["mcp-gateway"]["command"]);
}

#[test]
fn the_swarm_stack_uses_external_secrets_and_one_shard_per_replica() {
    for shards in [None, Some("7")] {
        let vars: Vec<(&str, &str)> = shards.map(|s| ("AGENTRY_SHARDS", s)).into_iter().collect();
        let config = compose_config("compose.swarm.yaml", &vars);
        for (name, secret) in config["secrets"].as_object().expect("secrets") {
            assert_eq!(secret["external"], true, "{name}: created with docker secret create");
        }
        let agent = &config["services"]["agent"];
        assert!(agent.get("build").is_none() && agent.get("models").is_none(), "docker stack deploy ignores these");
        let replicas = agent["deploy"]["replicas"].as_u64().expect("replicas");
        assert!(replicas > 1, "several replicas");
        if let Some(shards) = shards {
            assert_eq!(replicas.to_string(), shards);
        }
        let env = env_of(agent);
        assert_eq!(env["AGENTRY_SHARD_COUNT"], replicas.to_string(), "one shard per replica");
        assert_eq!(env["AGENTRY_SHARD_SLOT"], "{{.Task.Slot}}", "Swarm's 1-based task slot");
        assert_eq!(agent["deploy"]["restart_policy"]["condition"], "on-failure", "a finished shard stays finished");
        assert_eq!(agent["read_only"], true);
        let targets: Vec<&str> =
            agent["secrets"].as_array().expect("secrets").iter().map(|s| str_of(&s["target"], "t")).collect();
        assert!(
            targets.contains(&"/run/secrets/openai_api_key")
                && targets.contains(&"/run/secrets/mcp_gateway_auth_token")
        );
    }
    let text = std::fs::read_to_string(root().join("compose.swarm.yaml")).expect("stack file");
    let top_level: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with([' ', '#']) && l.contains(':'))
        .map(|l| l.split(':').next().unwrap_or_default())
        .collect();
    for key in &top_level {
        assert!(
            ["services", "networks", "volumes", "secrets", "configs", "version"].contains(key) || key.starts_with("x-"),
            "docker stack deploy rejects the top-level key {key}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes.

/// Every manifest under deploy/kubernetes (the batch, and the report merge in merge/), as
/// (file, document).
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![root().join("deploy/kubernetes")];
    while let Some(dir) = dirs.pop() {
        for path in std::fs::read_dir(&dir).expect("deploy/kubernetes").filter_map(Result::ok).map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .flat_map(|path| {
            let rel = path.strip_prefix(root()).expect("in repo").display().to_string();
            yaml_file(&rel).into_iter().map(move |doc| (rel.clone(), doc))
        })
        .collect()
}

/// The batch: the Indexed Job.
fn batch_job(manifests: &[(String, Value)]) -> Value {
    let jobs: Vec<&Value> = manifests
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "Job" && d["spec"]["completionMode"] == "Indexed")
        .collect();
    assert_eq!(jobs.len(), 1, "one Indexed Job");
    jobs[0].clone()
}

#[test]
fn the_kubernetes_manifests_pass_kubernetes_validate() {
    let files: Vec<String> = {
        let mut names: Vec<String> = manifests().into_iter().map(|(f, _)| f).collect();
        names.dedup();
        names
    };
    assert!(files.len() >= 3, "{files:?}");
    let mut args = vec!["--strict", "-k", KUBERNETES_VERSION];
    args.extend(files.iter().map(String::as_str));
    let output = run_tool(&tool("kubernetes-validate"), &args, &[]);
    assert!(output.status.success(), "kubernetes-validate:\n{}", describe(&output));
    let report = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(!report.contains("WARN") && !report.contains("ERROR"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_indexed_job_shares_the_batch_and_mounts_the_secret_as_files() {
    let manifests = manifests();
    let job = batch_job(&manifests);
    let spec = &job["spec"];
    let completions = spec["completions"].as_u64().expect("completions");
    assert!(completions > 1);
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let env: BTreeMap<String, String> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| Some((str_of(&e["name"], "name").to_owned(), e["value"].as_str()?.to_owned())))
        .collect();
    assert_eq!(env["AGENTRY_SHARD_COUNT"], completions.to_string(), "AGENTRY_SHARD_COUNT must equal completions");

    // Non-root (the image's user), read-only root filesystem.
    let (uid, gid) = runtime_user();
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], uid);
    assert_eq!(pod["securityContext"]["runAsGroup"], gid);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);

    // The Secret as a volume at the secrets directory, never with subPath (which would pin the
    // first version of each file and defeat the ..data symlink swap).
    let volumes = pod["volumes"].as_array().expect("volumes");
    let secret_volume = volumes.iter().find(|v| v.get("secret").is_some()).expect("a Secret volume");
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    let secret_mount = mounts.iter().find(|m| m["name"] == secret_volume["name"]).expect("the Secret is mounted");
    assert_eq!(secret_mount["mountPath"], SECRETS_DIR);
    assert!(secret_mount.get("subPath").is_none() && secret_mount.get("subPathExpr").is_none(), "{secret_mount}");
    assert!(secret_volume["secret"].get("items").is_none(), "all keys, named as agentry looks for them");

    // The config file the Job names passes `agentry config check` with the Job's environment.
    let args: Vec<&str> = container["args"].as_array().expect("args").iter().map(|a| str_of(a, "arg")).collect();
    let config_path = args.iter().skip_while(|a| **a != "--config").nth(1).expect("--config FILE");
    let config_mount = mounts
        .iter()
        .find(|m| config_path.starts_with(&format!("{}/", str_of(&m["mountPath"], "mountPath"))))
        .expect("the config file is mounted");
    let config_volume = volumes.iter().find(|v| v["name"] == config_mount["name"]).expect("volume");
    let config_map_name = &config_volume["configMap"]["name"];
    let config_map = manifests
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "ConfigMap" && &d["metadata"]["name"] == config_map_name)
        .expect("ConfigMap");
    let sandbox = tempfile::tempdir().expect("tempdir");
    let mount_dir = sandbox.path().join(str_of(&config_mount["mountPath"], "path").trim_start_matches('/'));
    std::fs::create_dir_all(&mount_dir).expect("mount dir");
    for (key, value) in config_map["data"].as_object().expect("data") {
        std::fs::write(mount_dir.join(key), str_of(value, "data")).expect("write");
    }
    let config_file = mount_dir.join(Path::new(config_path).file_name().expect("file name"));
    let secrets = sandbox.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentry"))
        .args(["config", "check", "--config"])
        .arg(&config_file)
        .current_dir(sandbox.path())
        .env_clear()
        .envs(&env)
        .env("JOB_COMPLETION_INDEX", "0")
        .env("AGENTRY__SECRETS__DIR", &secrets)
        .output()
        .await
        .expect("agentry config check");
    assert!(output.status.success(), "agentry config check with the Job's settings:\n{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&format!("questions_file = \"{}", mount_dir.display())), "{text}");

    // Each shard's output goes to a volume all pods share.
    let output_mount = mounts.iter().find(|m| m["mountPath"] == "/app/definitions").expect("output mount");
    let output_volume = volumes.iter().find(|v| v["name"] == output_mount["name"]).expect("volume");
    let claim = &output_volume["persistentVolumeClaim"]["claimName"];
    let pvc = manifests
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "PersistentVolumeClaim" && &d["metadata"]["name"] == claim)
        .expect("the claim");
    assert!(pvc["spec"]["accessModes"].as_array().expect("modes").iter().any(|m| m == "ReadWriteMany"), "{pvc}");
}

#[test]
fn the_report_merge_job_reads_every_shard_report_of_the_batch() {
    let manifests = manifests();
    let batch = batch_job(&manifests);
    let completions = batch["spec"]["completions"].as_u64().expect("completions");
    let merge = manifests
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Job" && d["spec"]["completionMode"] != "Indexed")
        .expect("the report merge Job");
    let pod = &merge["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"].as_array().expect("args").iter().map(|a| str_of(a, "arg")).collect();
    assert_eq!(args[..2], ["report", "merge"], "{args:?}");

    // The same volume as the batch, at the same place.
    let claim_at = |pod: &Value| -> (String, String) {
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v.get("persistentVolumeClaim").is_some())
            .expect("a claim");
        let mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == volume["name"])
            .expect("mounted");
        (
            str_of(&volume["persistentVolumeClaim"]["claimName"], "claim").to_owned(),
            str_of(&mount["mountPath"], "path").to_owned(),
        )
    };
    let (claim, dir) = claim_at(pod);
    assert_eq!((claim.clone(), dir.clone()), claim_at(&batch["spec"]["template"]["spec"]), "the batch's output volume");

    // Exactly one input per shard, named as agentry names shard reports.
    let mut inputs: Vec<&str> = Vec::new();
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "-o" | "--output" => {
                let output = rest.next().expect("output path");
                assert!(output.starts_with(&format!("{dir}/")), "the merged report goes to the volume: {output}");
            }
            input => inputs.push(input),
        }
    }
    let expected: Vec<String> =
        (0..completions).map(|i| format!("{dir}/report-shard-{i}-of-{completions}.json")).collect();
    assert_eq!(inputs, expected, "keep the merge inputs in step with the batch's completions");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
}

/// Runs the test build of agentry with exactly `env` in `cwd` (bounded: a hang fails the test).
async fn run_agentry(args: &[String], env: &BTreeMap<String, String>, cwd: &Path) -> (Option<i32>, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_agentry"))
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("agentry finished within 120 s")
    .expect("agentry ran");
    (
        output.status.code(),
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

fn count_questions(text: &str) -> usize {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

fn research_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("output dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "md"))
        .count()
}

/// The Swarm replicas and the Indexed Job's pods, run one after the other with their own
/// environment: each answers its shard and writes its shard report, no two write the same file,
/// and `agentry report merge` as deploy/README.md and the merge Job run it gives the whole batch.
#[tokio::test(flavor = "multi_thread")]
async fn swarm_replicas_and_job_pods_answer_their_shards_and_the_reports_merge() {
    let mcp = PythonMcpServer::start("streamable-http").await;
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model server");
    let sandbox = tempfile::tempdir().expect("sandbox");
    let secrets = sandbox.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets");
    std::fs::write(secrets.join("openai_api_key"), PLACEHOLDER_KEY).expect("key");
    let peers_env = |env: &mut BTreeMap<String, String>| {
        env.retain(|k, _| !k.starts_with("OTEL_EXPORTER_OTLP"));
        env.insert("MCP_SERVER_URL".into(), mcp.url());
        env.insert("MODEL_RUNNER_URL".into(), model.base_url());
        env.insert("AGENTRY__SECRETS__DIR".into(), secrets.display().to_string());
    };

    // Swarm: one task per slot, the stack's environment with Swarm's templates filled in.
    let stack = compose_config("compose.swarm.yaml", &[]);
    let agent = &stack["services"]["agent"];
    let replicas = agent["deploy"]["replicas"].as_u64().expect("replicas");
    let out = sandbox.path().join("swarm/definitions");
    std::fs::create_dir_all(&out).expect("out");
    let questions_target = str_of(&agent["configs"][0]["target"], "config target");
    let questions_source = str_of(&stack["configs"][str_of(&agent["configs"][0]["source"], "source")]["file"], "file");
    let questions_text = std::fs::read_to_string(questions_source).expect("questions");
    let questions_file = sandbox.path().join("swarm/questions.txt");
    std::fs::write(&questions_file, &questions_text).expect("questions copy");
    let command: Vec<String> =
        agent["command"].as_array().expect("command").iter().map(|c| str_of(c, "c").to_owned()).collect();
    for slot in 1..=replicas {
        let mut env = env_of(agent);
        for value in env.values_mut() {
            *value = value
                .replace("{{.Task.Slot}}", &slot.to_string())
                .replace("{{.Task.Name}}", &format!("agentry_agent.{slot}"));
            if value == questions_target {
                *value = questions_file.display().to_string();
            }
            if value == "/app/definitions" {
                *value = out.display().to_string();
            }
        }
        peers_env(&mut env);
        let (code, text) = run_agentry(&command, &env, sandbox.path()).await;
        assert_eq!(code, Some(0), "replica {slot}:\n{text}");
        let report = out.join(format!("report-shard-{}-of-{replicas}.json", slot - 1));
        assert!(report.exists(), "replica {slot} writes {}:\n{text}", report.display());
    }
    assert!(!out.join("report.json").exists(), "shards never write the whole batch's report");
    let inputs: Vec<String> =
        (0..replicas).map(|i| out.join(format!("report-shard-{i}-of-{replicas}.json")).display().to_string()).collect();
    let mut merge =
        vec!["report".to_owned(), "merge".to_owned(), "-o".to_owned(), out.join("report.json").display().to_string()];
    merge.extend(inputs);
    let (code, text) = run_agentry(&merge, &BTreeMap::new(), sandbox.path()).await;
    assert_eq!(code, Some(0), "{text}");
    let merged: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("merged")).expect("JSON");
    let total = count_questions(&questions_text);
    assert_eq!(merged["totals"]["ok"], total, "{merged}");
    assert_eq!(research_files(&out), total, "one research file per question, across the replicas");

    // Kubernetes: one pod per completion index, the ConfigMap mounted, the volume shared.
    let manifests = manifests();
    let job = batch_job(&manifests);
    let completions = job["spec"]["completions"].as_u64().expect("completions");
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mount_of = |kind: &str| {
        let volume = volumes.iter().find(|v| v.get(kind).is_some()).unwrap_or_else(|| panic!("a {kind} volume"));
        let mount = mounts.iter().find(|m| m["name"] == volume["name"]).expect("mounted");
        (volume.clone(), str_of(&mount["mountPath"], "path").to_owned())
    };
    let (config_volume, config_dir) = mount_of("configMap");
    let (_, output_dir) = mount_of("persistentVolumeClaim");
    let host = |path: &str| sandbox.path().join("k8s").join(path.trim_start_matches('/'));
    std::fs::create_dir_all(host(&config_dir)).expect("config dir");
    std::fs::create_dir_all(host(&output_dir)).expect("output dir");
    let config_map = manifests
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == config_volume["configMap"]["name"])
        .expect("ConfigMap");
    let mut k8s_questions = 0;
    for (key, value) in config_map["data"].as_object().expect("data") {
        // The ConfigMap names the output directory by its mount path; the sandbox stands for it.
        let text = str_of(value, "data").replace(&output_dir, &host(&output_dir).display().to_string());
        if key.ends_with(".txt") {
            k8s_questions += count_questions(&text);
        }
        std::fs::write(host(&config_dir).join(key), text).expect("config file");
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| {
            let a = str_of(a, "arg");
            if a.starts_with(&format!("{config_dir}/")) { host(a).display().to_string() } else { a.to_owned() }
        })
        .collect();
    for index in 0..completions {
        let mut env: BTreeMap<String, String> = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| Some((str_of(&e["name"], "name").to_owned(), e["value"].as_str()?.to_owned())))
            .collect();
        env.insert("JOB_COMPLETION_INDEX".into(), index.to_string());
        peers_env(&mut env);
        let (code, text) = run_agentry(&args, &env, sandbox.path()).await;
        assert_eq!(code, Some(0), "pod {index}:\n{text}");
        assert!(
            host(&output_dir).join(format!("report-shard-{index}-of-{completions}.json")).exists(),
            "pod {index}:\n{text}"
        );
    }
    let merge_job = manifests
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Job" && d["spec"]["completionMode"] != "Indexed")
        .expect("the merge Job");
    let merge: Vec<String> = merge_job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| {
            let a = str_of(a, "arg");
            if a.starts_with(&format!("{output_dir}/")) { host(a).display().to_string() } else { a.to_owned() }
        })
        .collect();
    let (code, text) = run_agentry(&merge, &BTreeMap::new(), sandbox.path()).await;
    assert_eq!(code, Some(0), "{text}");
    let merged: Value =
        serde_json::from_str(&std::fs::read_to_string(host(&output_dir).join("report.json")).expect("merged"))
            .expect("JSON");
    assert_eq!(merged["totals"]["ok"], k8s_questions, "{merged}");
    assert_eq!(research_files(&host(&output_dir)), k8s_questions);
}

// ---------------------------------------------------------------------------------------------
// agentry as the `agent` service runs it.

/// Whether this process runs as root (then the agent runs as the Compose `user:` instead, as in
/// the container; root would ignore the read-only directory).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn agentry_runs_as_the_compose_agent_service_would() {
    let config = compose_config("compose.yaml", &[]);
    let agent = &config["services"]["agent"];
    let workdir = final_workdir(&runtime_stage(&dockerfile())).display().to_string();

    // The container's filesystem, in a sandbox: /app (WORKDIR), the mounts, /run/secrets.
    let sandbox = tempfile::tempdir().expect("sandbox");
    chmod(sandbox.path(), 0o755);
    let host = |container: &str| sandbox.path().join(container.trim_start_matches('/'));
    std::fs::create_dir_all(host(&workdir)).expect("workdir");
    let user = str_of(&agent["user"], "user");
    let (uid, gid) = user.split_once(':').expect("user uid:gid");
    let (uid, gid): (u32, u32) = (uid.parse().expect("uid"), gid.parse().expect("gid"));
    let as_root = running_as_root();

    let mut mount_targets = Vec::new();
    let mut output_dir = None;
    for volume in agent["volumes"].as_array().expect("volumes") {
        let target = str_of(&volume["target"], "target").to_owned();
        let source = PathBuf::from(str_of(&volume["source"], "source"));
        let place = host(&target);
        std::fs::create_dir_all(place.parent().expect("parent")).expect("parent dirs");
        if source.is_file() {
            std::fs::copy(&source, &place).expect("copy mounted file");
            chmod(&place, 0o444);
        } else {
            // ./definitions: the output directory, the user's own.
            assert_eq!(volume["read_only"].as_bool(), None, "{target} is writable");
            std::fs::create_dir_all(&place).expect("output dir");
            if as_root {
                chown(&place, uid, gid);
            }
            output_dir = Some((target.clone(), place.clone()));
        }
        mount_targets.push(target);
    }
    let (output_target, output_host) = output_dir.expect("a writable output mount");

    // Secrets as Compose mounts them: the user's files (0600, as deploy/README.md says).
    let token = format!("gw-{:032x}", rand::random::<u128>());
    let secrets_host = host(SECRETS_DIR);
    std::fs::create_dir_all(&secrets_host).expect("secrets dir");
    for secret in agent["secrets"].as_array().expect("secrets") {
        let target = str_of(&secret["target"], "target");
        assert!(target.starts_with(&format!("{SECRETS_DIR}/")), "{target}");
        let value = match str_of(&secret["source"], "source") {
            "openai_api_key" => PLACEHOLDER_KEY.to_owned(),
            "mcp_gateway_auth_token" => token.clone(),
            other => panic!("unexpected secret {other}"),
        };
        let path = host(target);
        std::fs::write(&path, &value).expect("secret file");
        chmod(&path, 0o600);
        if as_root {
            chown(&path, uid, gid);
        }
    }

    // The peers stand in for the gateway (requiring the same bearer token) and Model Runner.
    let token_for_peer = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token_for_peer.path(), &token).expect("write token");
    let peer_token = token_for_peer.path().to_str().expect("utf-8").to_owned();
    let mcp = PythonMcpServer::start_with_args("streamable-http", &["--require-bearer", &peer_token]).await;
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model server");

    // The service's environment, its container paths moved into the sandbox.
    let mut env = env_of(agent);
    for value in env.values_mut() {
        for target in mount_targets.iter().chain([&workdir]) {
            if value == target || value.starts_with(&format!("{target}/")) {
                *value = format!("{}{}", host(target).display(), &value[target.len()..]);
            }
        }
    }
    let (gateway_host, gateway_port, gateway_path) = split_url(&env["MCP_SERVER_URL"]);
    assert!(config["services"].get(&gateway_host).is_some(), "MCP_SERVER_URL names the service {gateway_host}");
    assert_eq!(gateway_port, 8811);
    let (_, _, peer_path) = split_url(&mcp.url());
    assert_eq!(gateway_path, peer_path, "the default transport is Streamable HTTP at /mcp");
    env.insert("MCP_SERVER_URL".into(), mcp.url());
    let models = &agent["models"]["llm"];
    let local_model = str_of(&config["models"]["llm"]["model"], "model").to_owned();
    env.insert(str_of(&models["endpoint_var"], "endpoint_var").to_owned(), model.base_url());
    env.insert(str_of(&models["model_var"], "model_var").to_owned(), local_model.clone());
    // No collector here; the Compose wiring of OTLP is checked above.
    env.retain(|k, _| !k.starts_with("OTEL_EXPORTER_OTLP"));
    env.insert("AGENTRY__SECRETS__DIR".into(), secrets_host.display().to_string());

    let command: Vec<String> =
        agent["command"].as_array().expect("command").iter().map(|c| str_of(c, "arg").to_owned()).collect();
    let run = |env: BTreeMap<String, String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentry"));
        cmd.args(&command)
            .current_dir(host(&workdir))
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if as_root {
            cmd.uid(uid).gid(gid);
        }
        async move {
            let output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
                .await
                .expect("agentry finished within 120 s")
                .expect("agentry ran");
            let text =
                format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            (output.status.code(), text)
        }
    };

    // 1. A read-only output directory (a bind mount the user cannot write) is refused before
    //    any work, naming the directory: a usage error.
    chmod(&output_host, 0o555);
    let (code, text) = run(env.clone()).await;
    assert_eq!(code, Some(2), "a read-only output directory is a usage error (exit 2):\n{text}");
    assert!(text.contains(&output_host.display().to_string()), "the error names the directory:\n{text}");
    assert_eq!(model.request_count(), 0, "nothing is asked before the output directory is known to be writable");
    assert!(std::fs::read_dir(&output_host).expect("output dir").next().is_none(), "nothing written");

    // 2. Writable: the batch from the mounted questions file, one research file per question.
    chmod(&output_host, 0o755);
    let (code, text) = run(env.clone()).await;
    assert_eq!(code, Some(0), "{text}");
    let questions_file = config["services"]["agent"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| {
            env_of(agent).values().any(|val| val == str_of(&v["target"], "target"))
                && Path::new(str_of(&v["source"], "s")).is_file()
        })
        .map(|v| PathBuf::from(str_of(&v["source"], "source")))
        .expect("the questions file is a mount the environment names");
    let questions = std::fs::read_to_string(&questions_file)
        .expect("questions")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert!(questions >= 3, "a few sample questions in {}", questions_file.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&output_host)
        .expect("output")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    assert_eq!(files.len(), questions, "{files:?}\n{text}");
    let report_path = output_host.join("report.json");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report.json")).expect("JSON");
    assert_eq!(report["totals"]["ok"], questions, "{report}");
    let mut everything = text.clone() + &report.to_string();
    for file in &files {
        let research = std::fs::read_to_string(file).expect("research file");
        assert!(research.contains("route: \"local\""), "{research}");
        assert!(research.contains(&format!("model: \"{local_model}\"")), "{research}");
        if as_root {
            assert_eq!(std::fs::metadata(file).expect("meta").uid(), uid, "written as the service's user");
        }
        everything.push_str(&research);
    }
    assert!(text.contains(&output_target) || text.contains(&output_host.display().to_string()), "{text}");

    // The local route was taken with the placeholder never sent; the gateway token was.
    let requests = model.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.bearer.is_none()), "the placeholder key is never sent");
    assert!(requests.iter().all(|r| r.body["model"] == local_model.as_str()));
    assert!(mcp.stderr().contains("search"), "the search tool was called through the bearer-protected peer");
    assert!(!everything.contains(&token), "the gateway token leaked");
    assert!(!everything.contains(PLACEHOLDER_KEY), "the key leaked");
}
