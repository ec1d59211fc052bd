//! What a newcomer meets at the shell.
use std::process::Command;

/// Completes `words` (the last one partial) with the bash script `vigil completions
/// bash` prints, in a real bash.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let vigil = vigil_tests::vigil_bin();
    let script = format!(
        "source <('{}' completions bash) || exit 9\n\
         COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n\
         _vigil vigil \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        vigil.display(),
        words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let subs = bash_complete(&["vigil", "st"]);
    assert!(subs.contains(&"stats".to_string()), "{subs:?}");
    let flags = bash_complete(&["vigil", "agent", "--metrics-l"]);
    assert!(flags.contains(&"--metrics-listen".to_string()), "{flags:?}");
    let shells = bash_complete(&["vigil", "completions", ""]);
    for s in ["bash", "zsh", "fish"] {
        assert!(shells.contains(&s.to_string()), "{shells:?}");
    }
}

#[test]
fn zsh_and_fish_scripts_are_printed_and_an_unknown_shell_is_refused() {
    let vigil = vigil_tests::vigil_bin();
    for (shell, start) in [("zsh", "#compdef vigil"), ("fish", "complete -c vigil")] {
        let out = Command::new(&vigil)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(start),
            "{shell}: {}",
            &text[..text.len().min(200)]
        );
    }
    let out = Command::new(&vigil)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn a_pid_that_is_zero_or_absent_is_refused_before_tracing() {
    let vigil = vigil_tests::vigil_bin();
    for (pid, says) in [
        ("0", "idle task"),
        ("999999999", "no such process: 999999999"),
        ("abc", "not a process id"),
    ] {
        for cmd in [["trace", "syscalls"], ["trace", "slow-syscalls"]] {
            let out = Command::new(&vigil)
                .args(cmd)
                .args(["--pid", pid, "--duration", "1s"])
                .output()
                .unwrap();
            assert!(!out.status.success(), "{cmd:?} --pid {pid}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(says), "{cmd:?} --pid {pid}: {err}");
        }
    }
}

#[test]
fn rules_check_reports_a_missing_directory_every_bad_file_and_duplicate_ids() {
    let vigil = vigil_tests::vigil_bin();
    let out = Command::new(&vigil)
        .args(["rules", "check", "--dir", "/nonexistent-vigil-rules"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such directory"));

    let dir = tempfile::tempdir().unwrap();
    let rule = "rules:\n  - id: twice\n    description: x\n    severity: low\n    mitre: [T1059]\n    events: [exec]\n    condition:\n      process.exe: {prefix: [/x]}\n";
    std::fs::write(dir.path().join("a.yaml"), rule).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        format!("# the same rule again\n{rule}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("c.yaml"), "rules: [\n").unwrap();
    std::fs::write(
        dir.path().join("d.yaml"),
        "rules:\n  - id: bad\n    severity: loud\n",
    )
    .unwrap();
    // Two bad rules in one file: both reported, each at the line of its bad field.
    std::fs::write(
        dir.path().join("e.yaml"),
        format!(
            "{}  - id: late\n    description: x\n    severity: low\n    mitre: [T1059]\n    events: [exec]\n    condition:\n      process.exe: {{prefix: [/y]}}\n    dedup: 99999999999999999999d\n",
            rule.replace("twice", "first").replace("severity: low", "severity: loud")
        ),
    )
    .unwrap();
    let out = Command::new(&vigil)
        .args(["rules", "check", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("b.yaml:3: rule `twice` is also defined in"),
        "{err}"
    );
    assert!(err.contains("c.yaml:"), "every bad file: {err}");
    assert!(err.contains("d.yaml:"), "every bad file: {err}");
    assert!(
        err.contains("e.yaml:4: rule `first`: severity `loud`"),
        "{err}"
    );
    assert!(err.contains("e.yaml:16: rule `late`: dedup"), "{err}");
    assert!(err.contains("5 problems"), "{err}");
}

#[test]
fn a_bad_flag_or_value_exits_64_like_a_bad_config_and_says_what_is_wrong() {
    let vigil = vigil_tests::vigil_bin();
    let run = |args: &[&str]| {
        let out = Command::new(&vigil).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["agent", "--interval", "-5s"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("cannot be negative"), "{err}");
    let (code, err) = run(&["stats", "--no-such-flag"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, err) = run(&["trace", "syscalls", "--duration", "soon"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("not a duration"), "{err}");
    // A config file: every problem, each with its line and field, exit 64.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "interval = \"5x\"\n[detect]\nenabled = \"yes\"\n[spool]\nmax_bytes = \"lots\"\ntypo = 1\n",
    )
    .unwrap();
    let (code, err) = run(&["agent", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    for want in [
        "line 1: interval: unknown unit",
        "line 3: detect.enabled: invalid type",
        "line 5: spool.max_bytes: invalid type",
        "line 6: spool.typo: unknown field `typo`",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    let collector = dir.path().join("collector.toml");
    std::fs::write(&collector, "[tls]\nmode = 5\nlissen = 1\n").unwrap();
    let (code, err) = run(&["collector", "--config", collector.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("line 2: tls.mode: ") && err.contains("line 3: tls.lissen: unknown field"),
        "{err}"
    );
    // Help and version are answers, not errors.
    assert_eq!(run(&["--help"]).0, Some(0));
    assert_eq!(run(&["--version"]).0, Some(0));
}

/// The `--flags` in a piece of README text.
fn flags_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let tail = &rest[i + 2..];
        let n = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(tail.len());
        if n > 0 && tail.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push(format!("--{}", &tail[..n]));
        }
        rest = &tail[n..];
    }
    out
}

#[test]
fn every_command_in_the_readme_table_has_every_flag_the_readme_names() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let vigil = vigil_tests::vigil_bin();
    let mut checked = 0;
    for line in readme.lines().filter(|l| l.starts_with("| `vigil ")) {
        // Cells split on unescaped pipes (`bash\|zsh` stays one cell).
        let mut cells = Vec::new();
        let mut cell = String::new();
        let mut prev = ' ';
        for c in line.chars() {
            if c == '|' && prev != '\\' {
                cells.push(std::mem::take(&mut cell));
            } else {
                cell.push(c);
            }
            prev = c;
        }
        let (usage, what) = (&cells[1], cells.get(2).cloned().unwrap_or_default());
        for cmd in usage
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|c| c.starts_with("vigil "))
        {
            let words: Vec<&str> = cmd
                .split_whitespace()
                .skip(1)
                .take_while(|w| {
                    w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
                })
                .collect();
            let out = Command::new(&vigil)
                .args(&words)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "vigil {} --help failed",
                words.join(" ")
            );
            let help = String::from_utf8_lossy(&out.stdout);
            for flag in flags_in(cmd).into_iter().chain(flags_in(&what)) {
                assert!(
                    help.contains(&flag),
                    "the README names `{flag}` for `vigil {}`, which has no such flag",
                    words.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} commands found in the README's table"
    );
}
