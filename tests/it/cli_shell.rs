//! The CLI in a shell: completions, the man page, `--json`, `-q`/`-v`, `NO_COLOR`, and output
//! into a pipe whose reader has gone.

use serde_json::Value;

use crate::harness::Agentry;
use crate::peers::search_server_stdio_command;

/// A scratch directory whose `c.toml` configures one stdio MCP server (the Python search
/// server) and nothing that needs the network.
fn agentry_with_a_stdio_server() -> (Agentry, String) {
    let command = search_server_stdio_command();
    let agentry = Agentry::new();
    let config = agentry.file(
        "c.toml",
        &format!("[[mcp.servers]]\nname = \"search\"\ntransport = \"stdio\"\ncommand = {command:?}\ntools = []\n"),
    );
    (agentry, config.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_for_every_shell_are_generated_and_bash_accepts_its_own() {
    let agentry = Agentry::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = agentry.run(&["completions", shell]).await;
        run.expect_code(0);
        assert!(run.stdout.contains("agentry") && run.stdout.contains("tools"), "{shell}:\n{}", run.stdout);
        assert!(run.stdout.lines().count() > 10, "{shell}: {} lines", run.stdout.lines().count());
    }
    let script = agentry.run(&["completions", "bash"]).await;
    let path = agentry.file("agentry.bash", &script.stdout);
    let checked =
        agentry.run_bash(&format!("bash -n {} && . {} && complete -p agentry", path.display(), path.display())).await;
    checked.expect_code(0);
    assert!(checked.stdout.contains("agentry"), "the script registers a completion: {}", checked.stdout);
    let bogus = agentry.run(&["completions", "tcsh"]).await;
    bogus.expect_code(2);
    assert!(bogus.stderr.contains("possible values"), "{}", bogus.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_man_page_is_roff_naming_the_commands() {
    let run = Agentry::new().run(&["man"]).await;
    run.expect_code(0);
    assert!(run.stdout.starts_with(".ie") || run.stdout.contains(".TH agentry 1"), "{}", run.stdout);
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(run.stdout.contains(section), "{section}:\n{}", run.stdout);
    }
    for command in ["agentry\\-tools", "agentry\\-completions", "agentry\\-run"] {
        assert!(run.stdout.contains(command), "{command}:\n{}", run.stdout);
    }

    // Every page the list names, written into a directory.
    let agentry = Agentry::new();
    let run = agentry.run(&["man", "--dir", "man1"]).await;
    run.expect_code(0);
    let written: Vec<&str> = run.stdout.lines().collect();
    for page in ["man1/agentry.1", "man1/agentry-tools.1", "man1/agentry-config-check.1", "man1/agentry-report-show.1"]
    {
        assert!(written.contains(&page), "{page} in {written:?}");
    }
    let tools = std::fs::read_to_string(agentry.dir().join("man1/agentry-tools.1")).expect("agentry-tools.1");
    assert!(tools.contains(".TH agentry-tools 1") && tools.contains("\\-\\-json"), "{tools}");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_into_a_pipe_closed_early_ends_quietly_with_exit_0() {
    let (agentry, config) = agentry_with_a_stdio_server();
    let bin = env!("CARGO_BIN_EXE_agentry");
    // `true` has closed the pipe before agentry writes a byte: every write meets EPIPE.
    for args in [
        format!("tools -c {config}"),
        format!("tools --json -c {config}"),
        "completions bash".to_owned(),
        "man".to_owned(),
        "--help".to_owned(),
        "help tools".to_owned(),
        "--version".to_owned(),
    ] {
        let run = agentry.run_bash(&format!("{bin} {args} | true; exit ${{PIPESTATUS[0]}}")).await;
        assert_eq!(run.code, 0, "agentry {args} | true:\n{}", run.stderr);
        assert!(!run.stderr.contains("panicked") && !run.stderr.contains("Broken pipe"), "{args}:\n{}", run.stderr);
    }
    // As a user types it.
    let run = agentry.run_bash(&format!("set -o pipefail; {bin} tools -c {config} | head -n 1")).await;
    run.expect_code(0);
    assert!(run.stdout.starts_with("search (stdio"), "{}", run.stdout);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_json_is_one_document() {
    let (agentry, config) = agentry_with_a_stdio_server();
    let run = agentry.run(&["tools", "--json", "-c", &config]).await;
    run.expect_code(0);
    let document: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", run.stdout));
    let server = &document["servers"][0];
    assert_eq!(server["name"], "search");
    assert_eq!(server["transport"], "stdio");
    assert_eq!(server["status"], "ready");
    let search = server["tools"].as_array().expect("tools").iter().find(|t| t["name"] == "search").expect("search");
    assert_eq!(search["exposed_as"], "search");
    assert!(search["hints"].is_array() && search["retried_after_cut"].is_boolean(), "{search:#}");

    let down = Agentry::new();
    let path = down.file(
        "c.toml",
        "[mcp]\nconnect_timeout = \"2s\"\n[[mcp.servers]]\nname = \"gone\"\ntransport = \"stdio\"\ncommand = [\"/nonexistent/server\"]\n",
    );
    let run = down.run(&["tools", "--json", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    let document: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", run.stdout));
    assert_eq!(document["servers"][0]["status"], "unavailable");
    assert!(
        document["servers"][0]["error"].as_str().is_some_and(|e| e.contains("/nonexistent/server")),
        "{document:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_and_verbose_set_what_reaches_stderr_unless_rust_log_is_set() {
    let (agentry, config) = agentry_with_a_stdio_server();
    // An empty RUST_LOG counts as unset (the harness sets one).
    let agentry = agentry.env("RUST_LOG", "");
    let normal = agentry.run(&["tools", "-c", &config]).await;
    normal.expect_code(0);
    assert!(normal.stderr.contains("INFO") && normal.stderr.contains("MCP session ready"), "{}", normal.stderr);
    assert!(!normal.stderr.contains("DEBUG"), "{}", normal.stderr);

    let quiet = agentry.run(&["tools", "-q", "-c", &config]).await;
    quiet.expect_code(0);
    assert_eq!(quiet.stderr, "", "-q: errors only");
    assert_eq!(quiet.stdout, normal.stdout, "-q quiets the logs, not the output");
    let quiet_first = agentry.run(&["-q", "tools", "-c", &config]).await;
    assert_eq!(quiet_first.stderr, "", "a global flag, before or after the command");

    let verbose = agentry.run(&["tools", "-v", "-c", &config]).await;
    verbose.expect_code(0);
    assert!(verbose.stderr.contains("DEBUG"), "-v: agentry's debug logs\n{}", verbose.stderr);
    assert!(!verbose.stderr.contains("TRACE"), "{}", verbose.stderr);

    let both = agentry.run(&["tools", "-q", "-v", "-c", &config]).await;
    both.expect_code(2);
    assert!(both.stderr.contains("cannot be used with"), "{}", both.stderr);

    // RUST_LOG wins over -q.
    let agentry = agentry.env("RUST_LOG", "agentry=debug");
    let overruled = agentry.run(&["tools", "-q", "-c", &config]).await;
    assert!(overruled.stderr.contains("DEBUG"), "{}", overruled.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_colour_into_a_pipe_or_with_no_color() {
    let (agentry, config) = agentry_with_a_stdio_server();
    // stderr is a pipe here: plain text.
    let piped = agentry.run(&["tools", "-c", &config]).await;
    assert!(piped.stderr.contains("MCP session ready") && !piped.stderr.contains('\u{1b}'), "{:?}", piped.stderr);
    // On a terminal (script(1) gives one), colour unless NO_COLOR is set.
    let bin = env!("CARGO_BIN_EXE_agentry");
    let on_tty = |no_color: &str| format!("{no_color} script -qec '{bin} tools -c {config} 2>&1 >/dev/null' /dev/null");
    let coloured = agentry.run_bash(&on_tty("")).await;
    assert!(coloured.stdout.contains("\u{1b}["), "a terminal gets colour: {:?}", coloured.stdout);
    let plain = agentry.run_bash(&on_tty("NO_COLOR=1")).await;
    assert!(plain.stdout.contains("MCP session ready"), "{:?}", plain.stdout);
    assert!(!plain.stdout.contains("\u{1b}["), "NO_COLOR: {:?}", plain.stdout);
    // clap's own help follows the same rule.
    // (clap also wants a TERM that can colour; the harness's environment has none.)
    let help = |no_color: &str| format!("TERM=xterm {no_color} script -qec '{bin} --help' /dev/null");
    assert!(agentry.run_bash(&help("")).await.stdout.contains("\u{1b}["), "help on a terminal is coloured");
    let plain_help = agentry.run_bash(&help("NO_COLOR=1")).await;
    assert!(
        plain_help.stdout.contains("Usage: agentry") && !plain_help.stdout.contains('\u{1b}'),
        "{:?}",
        plain_help.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_also_quiets_the_progress_lines_and_the_demo_banner() {
    let agentry = Agentry::new().env("RUST_LOG", "");
    let quiet = agentry.run(&["demo", "-q", "--output-dir", "out"]).await;
    quiet.expect_code(0);
    assert_eq!(quiet.stderr, "", "-q: errors only");
    assert!(quiet.stdout.contains("ok"), "the summary is output, not noise:\n{}", quiet.stdout);
    let normal = agentry.run(&["demo", "--force", "--output-dir", "out"]).await;
    assert!(normal.stderr.contains("ok "), "progress lines without -q:\n{}", normal.stderr);
}
