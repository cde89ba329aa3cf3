//! The checks on this host: secrets, the output directory, the OTLP endpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Check, Status};
use crate::actors::secret_keeper::EnvLookup;
use crate::config::{Fallback, Settings};
use crate::llm::LlmError;
use crate::secrets;

/// Less free space than this in the output directory is a warning.
const LOW_SPACE_BYTES: u64 = 100 * 1024 * 1024;

/// Each secret the settings name: its source and fingerprint, and whether an HTTP header can
/// carry it. The API key's absence fails only with `model.fallback = "none"`.
pub fn secrets(settings: &Settings, env: &EnvLookup) -> Vec<Check> {
    let lookup = |name: &str| env(name);
    settings
        .secret_specs()
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let check = format!("secret.{}", spec.name);
            match secrets::load(spec, &settings.secrets.dir, &lookup) {
                Ok(Some(credential)) => {
                    let target = credential.source().to_string();
                    match secrets::header_safe(&credential) {
                        Ok(()) => Check::new(
                            check,
                            target,
                            Status::Pass,
                            format!("{}, header-safe", credential.fingerprint()),
                        ),
                        Err(error) => Check::new(check, target, Status::Fail, error.to_string()),
                    }
                }
                Ok(None) => {
                    let places = format!(
                        "{}, ${var}_FILE, ${var}",
                        settings.secrets.dir.join(&spec.name).display(),
                        var = spec.variable()
                    );
                    match (index, settings.model.fallback) {
                        (0, Fallback::None) => {
                            let error = LlmError::NoRoute { reason: String::new() };
                            Check::new(
                                check,
                                places,
                                Status::Fail,
                                "absent (or a placeholder), and model.fallback = \"none\": every question would fail",
                            )
                            .with_hint(error.hint())
                        }
                        (0, Fallback::Local) => Check::new(
                            check,
                            places,
                            Status::Pass,
                            "absent (or a placeholder): questions go to the local route",
                        ),
                        _ => Check::new(check, places, Status::Pass, "absent: no bearer token is sent"),
                    }
                }
                Err(error) => Check::new(
                    check,
                    settings.secrets.dir.join(&spec.name).display().to_string(),
                    Status::Fail,
                    error.to_string(),
                ),
            }
        })
        .collect()
}

/// The output directory: writable (a file is created and removed, the directory itself only
/// when it exists), its free space, and whether a batch holds its lock.
pub async fn output_dir(dir: &Path) -> Vec<Check> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || vec![examine_dir(&dir)])
        .await
        .unwrap_or_else(|error| vec![Check::new("output_dir", "", Status::Fail, format!("the check failed: {error}"))])
}

fn examine_dir(dir: &Path) -> Check {
    let target = dir.display().to_string();
    // A directory that does not exist yet is created by the run: its nearest existing parent
    // must be writable.
    let existing = dir
        .ancestors()
        .find(|a| a.as_os_str().is_empty() || a.exists())
        .map(|a| if a.as_os_str().is_empty() { PathBuf::from(".") } else { a.to_path_buf() });
    let Some(existing) = existing else {
        return Check::new("output_dir", target, Status::Fail, "no part of the path exists");
    };
    if !existing.is_dir() {
        return Check::new("output_dir", target, Status::Fail, format!("{} is not a directory", existing.display()))
            .with_hint(Some("set batch.output_dir (or --output-dir) to a directory".into()));
    }
    if let Err(error) = tempfile::Builder::new().prefix(".agentry-doctor-").tempfile_in(&existing) {
        return Check::new(
            "output_dir",
            target,
            Status::Fail,
            format!("{} is not writable: {error}", existing.display()),
        )
        .with_hint(Some("set batch.output_dir (or --output-dir) to a directory this user can write".into()));
    }
    let created = if existing == dir {
        String::new()
    } else {
        format!(" (created at the first run, under {})", existing.display())
    };
    let space = match nix::sys::statvfs::statvfs(&existing) {
        // Both are u64 on Linux, narrower elsewhere.
        #[allow(clippy::useless_conversion)]
        Ok(stat) => Some(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()))),
        Err(_) => None,
    };
    let free = space.map(|bytes| format!(", {} free", human_bytes(bytes))).unwrap_or_default();
    if let Some(held) = held_locks(dir) {
        let holders = held.iter().map(|(name, pid)| match pid {
            Some(pid) => format!("{name} (pid {pid})"),
            None => name.clone(),
        });
        return Check::new(
            "output_dir",
            target,
            Status::Warn,
            format!("writable{free}; locked by a running agentry: {}", holders.collect::<Vec<_>>().join(", ")),
        )
        .with_hint(Some(
            "another run is writing here: a run started now stops at once; wait for it, or give it another \
             batch.output_dir (or --shard)"
                .into(),
        ));
    }
    if let Some(bytes) = space.filter(|&bytes| bytes < LOW_SPACE_BYTES) {
        return Check::new(
            "output_dir",
            target,
            Status::Warn,
            format!("writable{created}, only {} free", human_bytes(bytes)),
        );
    }
    Check::new("output_dir", target, Status::Pass, format!("writable{created}{free}, not locked"))
}

/// The lock files in `dir` (`.agentry.lock`, `.agentry-shard-I-of-N.lock`) a live process holds,
/// with the pid each records; `None` when none is held.
fn held_locks(dir: &Path) -> Option<Vec<(String, Option<u32>)>> {
    use std::io::Read;
    let entries = std::fs::read_dir(dir).ok()?;
    let mut held = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(".agentry") && name.ends_with(".lock")) {
            continue;
        }
        let Ok(mut file) = std::fs::File::open(entry.path()) else { continue };
        // A lock this process could take is nobody's: released at once (the file closes).
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock_shared() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            held.push((name, pid.trim().parse().ok()));
        }
    }
    held.sort();
    (!held.is_empty()).then_some(held)
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// The OTLP endpoints, when set: a TCP connect, and over HTTP/protobuf an empty export (an
/// `Export*ServiceRequest` with nothing in it is zero bytes) that the collector must accept.
pub async fn otlp(settings: &Settings, env: &EnvLookup, timeout: Duration) -> Vec<Check> {
    let lookup = |name: &str| env(name);
    let targets: Vec<(&str, crate::telemetry::OtlpTarget)> = ["traces", "metrics"]
        .into_iter()
        .filter_map(|signal| {
            crate::telemetry::otlp_target(signal, &settings.telemetry.otlp_endpoint, &lookup).map(|t| (signal, t))
        })
        .collect();
    if targets.is_empty() {
        return vec![Check::new(
            "otlp",
            "",
            Status::Skip,
            "not set (OTEL_EXPORTER_OTLP_ENDPOINT, telemetry.otlp_endpoint): no traces or metrics are exported",
        )];
    }
    let checks = targets.into_iter().map(|(signal, target)| async move {
        let check = format!("otlp.{signal}");
        let url = match url::Url::parse(&target.endpoint) {
            Ok(url) => url,
            Err(error) => {
                return Check::new(check, target.endpoint.clone(), Status::Fail, format!("not a URL: {error}"));
            }
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Check::new(check, target.endpoint.clone(), Status::Fail, "the URL has no host");
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
            Err(_) => {
                return Check::new(
                    check,
                    target.endpoint,
                    Status::Fail,
                    format!("no TCP connection within {timeout:?}"),
                )
                .with_hint(Some(OTLP_HINT.into()));
            }
            Ok(Err(error)) => {
                return Check::new(check, target.endpoint, Status::Fail, format!("cannot connect: {error}"))
                    .with_hint(Some(OTLP_HINT.into()));
            }
            Ok(Ok(_)) => {}
        }
        if target.grpc {
            return Check::new(check, target.endpoint, Status::Pass, "gRPC: the port accepts connections");
        }
        let http = match reqwest::Client::builder().timeout(timeout).build() {
            Ok(http) => http,
            Err(error) => return Check::new(check, target.endpoint, Status::Fail, error.to_string()),
        };
        let sent =
            http.post(url).header(reqwest::header::CONTENT_TYPE, "application/x-protobuf").body(Vec::new()).send();
        match sent.await {
            Ok(response) if response.status().is_success() => Check::new(
                check,
                target.endpoint,
                Status::Pass,
                format!("HTTP/protobuf: an empty export was accepted (HTTP {})", response.status().as_u16()),
            ),
            Ok(response) => Check::new(
                check,
                target.endpoint,
                Status::Fail,
                format!("HTTP/protobuf: an empty export was refused (HTTP {})", response.status().as_u16()),
            )
            .with_hint(Some(
                "is this an OTLP/HTTP receiver (port 4318)? For gRPC (port 4317) set OTEL_EXPORTER_OTLP_PROTOCOL=grpc"
                    .into(),
            )),
            Err(error) => Check::new(check, target.endpoint, Status::Fail, crate::error_chain(&error.without_url()))
                .with_hint(Some(OTLP_HINT.into())),
        }
    });
    futures::future::join_all(checks).await
}

const OTLP_HINT: &str = "start the collector, or correct OTEL_EXPORTER_OTLP_ENDPOINT (telemetry.otlp_endpoint); \
                         unset it to export nothing";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }

    #[test]
    fn a_directory_not_made_yet_is_checked_through_its_parent() {
        let root = tempfile::tempdir().expect("tempdir");
        let check = examine_dir(&root.path().join("a/b"));
        assert_eq!(check.status, Status::Pass, "{check:?}");
        assert!(check.evidence.contains("created at the first run"), "{check:?}");
        assert!(!root.path().join("a").exists(), "the check creates nothing");
    }
}
